"""Knowledge distillation (train/distill.py): the loss, the teacher's view of a student's batch,
and a student trained with --teacher from the command line."""
import json

import pytest
import torch
from conftest import make_ham_folder, run_train

from skinlesion.models.network import create_model, save_model_folder
from skinlesion.ops.record import sha256
from skinlesion.tasks import get_task
from train.distill import Teacher, TeacherError, distillation_loss

TASK = get_task("ham10000")


def test_the_loss_is_the_labels_at_weight_one_and_the_teacher_at_zero():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 7, requires_grad=True), torch.randn(8, 7)
    labels = torch.randint(0, 7, (8,))
    hard = torch.nn.CrossEntropyLoss()
    assert torch.allclose(distillation_loss(student, labels, teacher, hard, 1.0, 2.0), hard(student, labels))
    assert distillation_loss(teacher, labels, teacher, hard, 0.0, 2.0).abs() < 1e-6  # the teacher's own answer
    loss = distillation_loss(student, labels, teacher, hard, 0.0, 4.0)
    loss.backward()
    stepped = student - 1.0 * student.grad  # one step downhill moves the student towards the teacher
    assert distillation_loss(stepped, labels, teacher, hard, 0.0, 4.0) < loss


@pytest.fixture
def teacher_folder(tmp_path):
    """A small model folder (random weights, its own size and a fitted-looking temperature)."""
    torch.manual_seed(0)
    model = create_model(len(TASK.codes), image_size=40)
    torch.nn.init.normal_(model.get_classifier().weight, std=0.5)
    folder = tmp_path / "teacher"
    save_model_folder(model, folder, TASK, extra={"temperature": 1.7})
    return folder, model


def test_the_teacher_sees_the_students_pixels_at_its_own_size_and_normalisation(teacher_folder):
    """A batch normalised for the student (another mean and std, another size) gives the teacher
    its own input: the same logits, divided by its temperature, as the teacher run directly."""
    folder, model = teacher_folder
    student_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}
    teacher = Teacher(folder, TASK, None, student_cfg, torch.device("cpu"), channels_last=False)
    pixels = torch.rand(2, 3, 40, 40)
    x = (pixels - 0.5) / 0.25
    cfg = model.pretrained_cfg
    own = (pixels - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model.eval()(own) / 1.7
    assert torch.allclose(teacher.logits(x), expected, atol=1e-4)
    assert teacher.logits(torch.nn.functional.interpolate(x, size=(32, 32))).shape == (2, 7)  # resized to 40


def test_a_teacher_of_another_preprocessing_or_task_is_refused(teacher_folder):
    student_cfg = {"mean": (0.5,) * 3, "std": (0.5,) * 3}
    with pytest.raises(TeacherError, match="preprocessing"):
        Teacher(teacher_folder[0], TASK, {"colour_constancy": "shades_of_gray", "p": 6}, student_cfg,
                torch.device("cpu"))
    with pytest.raises(TeacherError, match="cannot teach a neu run"):
        Teacher(teacher_folder[0], get_task("neu"), None, student_cfg, torch.device("cpu"))


@pytest.mark.slow
def test_a_student_trains_with_a_teacher_from_the_command_line(tmp_path, tiny_run):
    """`python -m train --teacher FOLDER`: the run finishes and its folder records the teacher
    and the distillation settings."""
    data = make_ham_folder(tmp_path / "ham", per_class=20)
    out = tmp_path / "student"
    result = run_train("--data", data, "--out", out, "--epochs", "1", "--image-size", "32", "--batch-size", "16",
                       "--workers", "0", "--teacher", tiny_run / "model", "--distill-temperature", "3",
                       "--distill-weight", "0.3", "--no-explanations")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "teacher: " in result.stderr
    training = json.loads((out / "model" / "config.json").read_text())["training"]
    teacher = training["teacher"]  # the folder by name, its weights' hash and what answers in it
    assert (teacher["folder"], teacher["sha256"], training["distill_temperature"], training["distill_weight"]) == (
        tiny_run.name, sha256(tiny_run / "model" / "model.safetensors"), 3.0, 0.3)
    assert teacher["models"] == ["efficientnet_b0 at 32 px"]
    card = (out / "model" / "README.md").read_text()
    assert f"distilled from the folder `{tiny_run.name}`" in card
