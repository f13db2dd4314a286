"""A model folder's config.json, read and checked once into a `ModelSpec`.

Everything that uses a model — the Predictor, evaluation, export, the page — takes its facts
from the spec: the task and its classes, the input size and normalisation, the decision
rule, where the weights started from. The raw dict stays available as `spec.config` for the
code that writes the folder back.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..decision import DecisionRule
from ..tasks import Task, get_task
from .folder import write_json

CONFIG_FILE = "config.json"
REQUIRED_CONFIG = ("architecture", "num_classes", "label_names", "pretrained_cfg")


class ModelFolderError(ValueError):
    """A model folder is missing, incomplete, or its config does not match its weights."""


@dataclass(frozen=True)
class ModelSpec:
    task: Task
    architecture: str
    codes: tuple[str, ...]        # the model's output order
    input_size: int               # the model sees the whole image squashed to size×size (it answers at)
    mean: tuple[float, ...]       # normalisation on the 0..1 scale
    std: tuple[float, ...]
    rule: DecisionRule            # temperature, class bias, thresholds (decision.py)
    preprocessing: dict[str, Any] | None  # the model's own steps before the resize (colour.py); None: none
    initialisation: str | None    # where training started: model.INIT_*; None when unrecorded
    training: dict[str, Any]      # the settings the model was trained with
    config: dict[str, Any]        # config.json as read

    @property
    def num_classes(self) -> int:
        return len(self.codes)

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = CONFIG_FILE) -> "ModelSpec":
        missing = [k for k in REQUIRED_CONFIG if k not in config]
        if missing:
            raise ModelFolderError(f"{where} lacks {', '.join(missing)}")
        codes = tuple(config["label_names"])
        if len(codes) != config["num_classes"]:
            raise ModelFolderError(f"{where}: {len(codes)} label_names but num_classes = {config['num_classes']}")
        try:
            task = get_task(config.get("task"))
        except ValueError as error:
            raise ModelFolderError(f"{where}: {error}") from None
        if set(codes) != set(task.codes):
            raise ModelFolderError(f"{where}: labels {list(codes)} are not the classes of task {task.key!r}")
        cfg = config["pretrained_cfg"]
        training = config.get("training") or {}
        # timm's keys: input_size is the size the network trained at, test_input_size (when
        # present: python -m train.resolution) the size it answers at.
        answer_size = cfg.get("test_input_size") or cfg["input_size"]
        return cls(task=task, architecture=config["architecture"], codes=codes,
                   input_size=int(answer_size[-1]), mean=tuple(cfg["mean"]), std=tuple(cfg["std"]),
                   rule=DecisionRule.from_config(config), preprocessing=config.get("preprocessing"),
                   initialisation=training.get("initialisation"),
                   training=training, config=config)


def read_config(folder: str | Path) -> dict[str, Any]:
    """config.json of a model folder, as a dict; ModelFolderError when absent or not JSON."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelFolderError(f"model folder not found: {folder}")
    if not path.is_file():
        raise ModelFolderError(f"{folder} has no {CONFIG_FILE}: not a model folder")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ModelFolderError(f"{path} is not valid JSON: {error}") from None


def read_spec(folder: str | Path) -> ModelSpec:
    return ModelSpec.from_config(read_config(folder), str(Path(folder) / CONFIG_FILE))


def update_config(folder: str | Path, **values: Any) -> dict[str, Any]:
    """Add or replace top-level config entries (the decision rule, training facts) in place."""
    config = {**read_config(folder), **values}
    write_json(Path(folder) / CONFIG_FILE, config)
    return config
