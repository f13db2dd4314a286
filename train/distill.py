"""Knowledge distillation (Hinton, Vinyals & Dean, "Distilling the knowledge in a neural
network", 2015): a student learns from a teacher's calibrated probabilities as well as from
the labels, so that one network can carry what an ensemble (or a larger model) knows.

    loss = w · CE(student, labels) + (1 − w) · τ² · KL(teacher_τ ‖ student_τ)

CE is the run's own loss (class weights, label smoothing). student_τ = softmax(z / τ);
teacher_τ = softmax(ℓ / (T · τ)), where ℓ is what the teacher folder's network answers (its
logits, or an ensemble's log-probabilities: models/ensemble.py) and T its folder's fitted
temperature, so that the targets are the teacher's calibrated probabilities softened by τ.
τ² keeps the soft part's gradients at the scale of the hard part's (Hinton et al., §2).

The teacher sees every augmented training batch the student sees (online distillation): the
student's input is turned back into pixels and made the teacher's input (its size, mean and
std). The teacher must share the student's preprocessing (colour constancy), else its
probabilities would be of other pixels: TeacherError.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from skinlesion.models.ensemble import load_ensemble
from skinlesion.models.network import WEIGHTS_FILE
from skinlesion.ops.record import sha256
from skinlesion.tasks import Task


class TeacherError(ValueError):
    """--teacher names a folder that cannot teach this run (another task, another preprocessing)."""


def _channels(values, device: torch.device) -> torch.Tensor:
    """Per-channel values shaped to broadcast over an NCHW batch."""
    return torch.tensor(values, device=device).view(1, -1, 1, 1)


class Teacher:
    """A model folder's answering network, frozen, turned into soft targets for a student."""

    def __init__(self, folder: Path, task: Task, preprocessing: dict | None, student_cfg: dict,
                 device: torch.device, channels_last: bool = True):
        folder = Path(folder)
        net, spec = load_ensemble(folder)
        if spec.task.key != task.key:
            raise TeacherError(f"--teacher {folder}: a {spec.task.key} model cannot teach a {task.key} run")
        if (spec.preprocessing or None) != (preprocessing or None):
            raise TeacherError(f"--teacher {folder}: its preprocessing {spec.preprocessing} is not this run's "
                               f"{preprocessing} (--colour-constancy)")
        self.net = net.eval().requires_grad_(False).to(
            device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        self.order = [spec.codes.index(c) for c in task.codes]  # the teacher's outputs in the run's class order
        self.temperature = spec.rule.temperature
        self.size = spec.input_size
        self.student = _channels(student_cfg["mean"], device), _channels(student_cfg["std"], device)  # the batch's
        self.own = _channels(spec.mean, device), _channels(spec.std, device)  # and the teacher's normalisation
        self.channels_last = channels_last
        name = folder.parent.name if folder.name == "model" else folder.name  # runs/<name>/model
        self.record = {"folder": name, "sha256": sha256(folder / WEIGHTS_FILE),  # config.json's training.teacher
                       "models": net.describe(spec.input_size)["models"], "temperature": self.temperature}

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's calibrated logits (ℓ / T) of the student's input batch, in the run's class order."""
        pixels = x.float() * self.student[1] + self.student[0]
        if tuple(pixels.shape[-2:]) != (self.size, self.size):
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False,
                                   antialias=True)
        inputs = (pixels - self.own[0]) / self.own[1]
        if self.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        return self.net(inputs).float()[:, self.order] / self.temperature


def distillation_loss(student: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor,
                      hard: Callable[..., torch.Tensor], weight: float, temperature: float) -> torch.Tensor:
    """w · hard(student, labels) + (1 − w) · τ² · KL(softmax(teacher / τ) ‖ softmax(student / τ))."""
    soft = F.kl_div(F.log_softmax(student.float() / temperature, dim=1),
                    F.log_softmax(teacher / temperature, dim=1), log_target=True, reduction="batchmean")
    return weight * hard(student, labels) + (1 - weight) * temperature ** 2 * soft
