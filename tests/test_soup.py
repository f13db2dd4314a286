"""Model soups (train/soup.py): fine-tunings of one model averaged into one network."""
import json
import shutil

import pytest
import safetensors.torch
import torch
from conftest import run_train

from skinlesion import Predictor
from skinlesion.models.card import card_body, read_metrics
from skinlesion.models.network import WEIGHTS_FILE, create_model, load_model_folder, save_model_folder
from skinlesion.models.spec import read_spec
from skinlesion.ops.record import sha256
from skinlesion.tasks import get_task
from train.soup import SoupError, average, check, greedy


def test_the_average_is_the_mean_of_the_floats_and_keeps_the_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(5)}
    b = {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(9)}
    soup = average([a, b])
    assert soup["w"].tolist() == [2.0, 4.0] and soup["n"].item() == 5 and soup["n"].dtype == a["n"].dtype


def test_greedy_keeps_an_ingredient_only_when_the_soup_does_not_fall():
    scores = [0.70, 0.75, 0.60, 0.72]        # order: 1, 3, 0, 2
    soups = {(1, 3): 0.78, (1, 3, 0): 0.77, (1, 3, 2): 0.78}
    kept, best = greedy(scores, lambda members: soups[tuple(members)], ["a", "b", "c", "d"])
    assert kept == [1, 3, 2] and best == 0.78  # 0 lowered the soup; 2 held it level


def folder_of(model, path, lineage=()):
    save_model_folder(model, path, get_task("ham10000"), extra={"training": {"lineage": list(lineage)}})
    return path


def test_ingredients_must_share_a_start_and_a_network(tmp_path):
    torch.manual_seed(0)
    start = folder_of(create_model(7, image_size=32), tmp_path / "start")
    step = {"folder": "start", "sha256": sha256(start / WEIGHTS_FILE), "epochs": 1, "best_epoch": 1}
    child = folder_of(create_model(7, image_size=32), tmp_path / "child", [step])
    stranger = folder_of(create_model(7, image_size=32), tmp_path / "stranger")
    other_net = folder_of(create_model(7, architecture="efficientnet_lite0", image_size=32), tmp_path / "lite0", [step])
    folders = [start, child]
    check([read_spec(f) for f in folders], folders)  # the child continued the start: one basin
    with pytest.raises(SoupError, match="share no starting folder"):
        check([read_spec(f) for f in (child, stranger)], [child, stranger])
    with pytest.raises(SoupError, match="network, classes and preprocessing"):
        check([read_spec(f) for f in (start, other_net)], [start, other_net])


@pytest.mark.slow  # the command line in a new process: data, two scores, the folder written
def test_a_uniform_soup_answers_with_the_averaged_weights(tiny_run, tmp_path):
    """The command line: the folder it writes holds the mean of the ingredients and says how it was made."""
    data, first = tiny_run.parent / "ham", tiny_run / "model"
    second = tmp_path / "continued"
    shutil.copytree(first, second)
    model, spec = load_model_folder(first)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    step = {"folder": "model", "sha256": sha256(first / WEIGHTS_FILE), "epochs": 2, "best_epoch": 2}
    save_model_folder(model, second, spec.task, extra={"training": {**spec.training, "lineage": [step]},
                                                       "preprocessing": spec.preprocessing})
    out = tmp_path / "soup"
    result = run_train(first, second, "--data", data, "--out", out, "--uniform", module="train.soup")
    assert result.returncode == 0, result.stderr[-3000:]
    states = [safetensors.torch.load_file(f / WEIGHTS_FILE) for f in (first, second, out)]
    for key, value in states[2].items():
        mean = (states[0][key].float() + states[1][key].float()) / 2
        expected = mean if value.is_floating_point() else states[0][key]
        assert torch.allclose(value.float(), expected.float(), atol=1e-6), key
    record = json.loads((out / "config.json").read_text())["training"]["soup"]
    assert record["method"] == "uniform" and [i["kept"] for i in record["ingredients"]] == [True, True]
    assert 0 <= record["val_balanced_accuracy"] <= 1
    soup_spec = read_spec(out)
    card = card_body(soup_spec, read_metrics(first))  # the card names what was averaged
    assert "uniform model soup" in card and f"`run` (sha256 {sha256(first / WEIGHTS_FILE)[:12]}…)" in card
    assert "`continued`" in card
    assert Predictor.from_pretrained(out).analyse(next(data.glob("**/*.jpg")), method=None).decided in spec.codes
    refused = run_train(first, tmp_path / "nothing", "--data", data, "--out", tmp_path / "x", module="train.soup")
    assert refused.returncode == 2 and "model folder not found" in refused.stderr
