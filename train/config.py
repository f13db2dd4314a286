"""The settings of a training run, typed: one frozen dataclass per group (data, model,
optimisation, augmentation, runtime) in a `TrainConfig`, checked once when it is built and never
changed after. Facts of a run that are not settings (its world size under torchrun, the device
it got) travel beside it.

Every setting has one name: the field, the YAML key and the flag (`_` written `-`). A YAML file
(--config) gives defaults, the command line overrides them (train/flags.py); an unknown key is
an error. The whole config is saved beside the run (OUT/config.yaml, itself a --config file) and in the model
folder's config.json under `training` (train/__main__.py), so nothing a run was made with is lost.
"""
from __future__ import annotations

import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Union, get_args, get_origin, get_type_hints

import yaml

from skinlesion.colour import METHODS as COLOUR_CONSTANCY
from skinlesion.models.network import ARCHITECTURE
from skinlesion.tasks import ALIASES, DEFAULT_TASK, TASKS
from skinlesion.transforms import Augmentation

from .distributed import default_workers

CONFIG_YAML = "config.yaml"
# A range per setting, checked when a group is built; settings not named accept any value of their type.
RANGES = {">0": lambda v: v > 0, ">=0": lambda v: v >= 0, ">=1": lambda v: v >= 1, "in [0, 1)": lambda v: 0 <= v < 1,
          "in [0, 1]": lambda v: 0 <= v <= 1}


class ConfigError(ValueError):
    """A setting of the wrong type, out of range or unknown: said once, before anything runs."""


class Group:
    """The checks every settings group shares: each value of its field's type, and in range."""
    title: ClassVar[str]
    ranges: ClassVar[dict[str, str]] = {}
    choices: ClassVar[dict[str, tuple]] = {}  # beyond Literal types: choices known at run time

    def __post_init__(self) -> None:
        for f in fields(self):
            value, hint = getattr(self, f.name), get_type_hints(type(self))[f.name]
            if not _fits(hint, value) or value not in self.choices.get(f.name, (value,)):
                raise ConfigError(f"{f.name}: {value!r} is not {describe(type(self), f.name)}")
            rule = self.ranges.get(f.name)
            if rule and value is not None and not RANGES[rule](value):
                raise ConfigError(f"{f.name}: {value!r} is not {rule}")


@dataclass(frozen=True)
class DataConfig(Group):
    """What to learn from: the task, its data folder, which images."""
    title: ClassVar[str] = "data"
    choices: ClassVar[dict[str, tuple]] = {"task": (*TASKS, *ALIASES)}
    ranges: ClassVar[dict[str, str]] = {"max_samples": ">=1"}
    task: str = DEFAULT_TASK              # the first task found (skinlesion/tasks/): dermoscopy
    data: Path | None = None              # no default: where the data lives is the user's to say
    extra_data: Path | None = None        # None: the task's data alone; else more training sources (train/sources.py)
    max_samples: int | None = None        # None: every image; a subset only for quick checks
    seed: int = 0                         # any fixed seed: the split and the subset must be repeatable


@dataclass(frozen=True)
class ModelConfig(Group):
    """The network: which, from which weights, at which input size, how regularised."""
    title: ClassVar[str] = "model"
    choices: ClassVar[dict[str, tuple]] = {"colour_constancy": COLOUR_CONSTANCY}
    ranges: ClassVar[dict[str, str]] = {"image_size": ">=1", "drop_rate": "in [0, 1)", "drop_path_rate": "in [0, 1)"}
    architecture: str = ARCHITECTURE      # EfficientNet-B0: accurate for its size, trainable on a CPU
    pretrained: bool = False              # off: a run needs nothing but its data (no download)
    image_size: int = 224                 # B0's native resolution
    drop_rate: float = 0.2                # timm's dropout before B0's head
    drop_path_rate: float = 0.1           # light stochastic depth: the datasets are small
    colour_constancy: str = "none"        # none: as the bundled models; the step goes into the model folder
    init: Path | None = None              # None: ImageNet or random (`pretrained`); else a model folder's weights


@dataclass(frozen=True)
class OptimConfig(Group):
    """How the weights move: AdamW, warm-up then cosine decay, a weighted smoothed loss, an EMA."""
    title: ClassVar[str] = "optimisation"
    ranges: ClassVar[dict[str, str]] = {"epochs": ">=1", "batch_size": ">=1", "lr": ">0", "min_lr": ">=0",
                                        "weight_decay": ">=0", "warmup_epochs": ">=0", "clip_grad": ">=0",
                                        "label_smoothing": "in [0, 1)", "ema_decay": "in [0, 1)",
                                        "distill_temperature": ">0", "distill_weight": "in [0, 1]"}
    epochs: int = 30                      # from random weights HAM10000 still improves past 20
    batch_size: int = 64                  # per process; fits a CPU's memory at 224 px
    lr: float = 2e-3                      # AdamW peak for training from random weights
    min_lr: float = 1e-5                  # the cosine's floor: the last epochs still move a little
    weight_decay: float = 0.05            # AdamW's usual for convnets; not on norms and biases
    warmup_epochs: float = 1.0            # one epoch lets AdamW's moments settle before the peak
    clip_grad: float = 5.0                # a loose cap: only catches the rare spike; 0 = off
    class_weights: Literal["inverse", "inverse-sqrt", "none"] = "inverse-sqrt"  # rare classes count, not 60x
    label_smoothing: float = 0.1          # the labels of similar-looking lesions are not certain
    ema_decay: float = 0.999              # averages about the last thousand steps; 0 = off
    teacher: Path | None = None           # a model folder whose probabilities the student learns too (distill.py)
    distill_temperature: float = 2.0      # τ: softens teacher and student alike (Hinton et al. 2015)
    distill_weight: float = 0.5           # the labels' share of the loss; the teacher's is the rest


@dataclass(frozen=True)
class AugmentConfig(Group):
    """The training augmentations (skinlesion.transforms.Augmentation) and where they run."""
    title: ClassVar[str] = "augmentation"
    ranges: ClassVar[dict[str, str]] = {"aug_strength": ">=0", "aug_shift": ">=0", "mixup": ">=0", "cutmix": ">=0"}
    aug_strength: float = 1.0             # the ranges as measured for the bundled models
    aug_shift: float = 0.0                # 0: as the bundled models; 1: the acquisition-shift steps at their set odds
    mixup: float = 0.0                    # MixUp's Beta(α, α) (train/mixing.py); 0: off, as the bundled models
    cutmix: float = 0.0                   # CutMix's Beta(α, α); 0: off. Both on: one or the other per batch
    augment_on: Literal["workers", "device"] = "workers"  # workers: any machine; device: for GPUs

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.augment_on == "device" and self.aug_shift > 0:
            raise ConfigError("aug_shift: the acquisition-shift steps (zoom crops, downscale, sharpen, JPEG, "
                              "vignette) run in the loader workers only; use --augment-on workers or --aug-shift 0")

    def augmentation(self) -> Augmentation:
        """The one augmentation settings object both pipelines read."""
        return Augmentation(strength=self.aug_strength, shift=self.aug_shift)


@dataclass(frozen=True)
class RuntimeConfig(Group):
    """Where the run executes and writes, and how fast: the device, its precision, the loaders."""
    title: ClassVar[str] = "runtime"
    ranges: ClassVar[dict[str, str]] = {"workers": ">=0"}
    out: Path | None = None               # no default: a run folder is never guessed
    device: str = "auto"                  # the GPU when there is one, else the CPU
    amp: bool | None = None               # None: on for CUDA, off on CPUs (slower there)
    channels_last: bool | None = None     # None: on (about 1.7x faster on CPUs too)
    workers: int = field(default_factory=default_workers)  # this machine's cores, shared by its processes
    resume: bool = False                  # a new run unless asked: never continue one by accident
    no_explanations: bool = False         # the Grad-CAM check is part of a real run's report


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run, in its groups; setting names are unique across groups, so
    the flat view (`settings`, YAML, config.json) needs no group prefix."""
    dataset: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_settings(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """From flat `name: value` pairs (a YAML file, the parsed flags); names not given keep
        their defaults, unknown names are a ConfigError."""
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}")
        return cls(**{name: group(**{f.name: _loaded(group, f.name, values[f.name])
                                     for f in fields(group) if f.name in values})
                      for name, group in GROUPS.items()})

    def groups(self) -> list[Group]:
        return [getattr(self, name) for name in GROUPS]

    def settings(self) -> dict[str, Any]:
        """Every setting by its name, paths as text: what OUT/config.yaml and the model folder's
        config.json `training` hold."""
        return {f.name: str(v) if isinstance(v := getattr(group, f.name), Path) else v
                for group in self.groups() for f in fields(group)}

    def to_yaml(self) -> str:
        """The settings as a --config file, one commented block per group."""
        flat = self.settings()
        return "\n".join(f"# {group.title}: {type(group).__doc__.splitlines()[0]}\n"
                         + yaml.safe_dump({f.name: flat[f.name] for f in fields(group)}, sort_keys=False)
                         for group in self.groups())


GROUPS: dict[str, type[Group]] = {f.name: get_type_hints(TrainConfig)[f.name] for f in fields(TrainConfig)}
SETTINGS: dict[str, type[Group]] = {f.name: g for g in GROUPS.values() for f in fields(g)}
assert len(SETTINGS) == sum(len(fields(g)) for g in GROUPS.values()), "a setting name is in two groups"


def _fits(hint: Any, value: Any) -> bool:
    if get_origin(hint) is Literal:
        return value in get_args(hint)
    if get_origin(hint) in (Union, types.UnionType):
        return any(_fits(h, value) for h in get_args(hint))
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


def base_type(hint: Any) -> tuple[Any, bool]:
    """(the type a flag converts to, whether None is allowed) of a field's type hint."""
    args = get_args(hint)
    if get_origin(hint) in (Union, types.UnionType):
        return next(a for a in args if a is not type(None)), type(None) in args
    return (str if get_origin(hint) is Literal else hint), False


def choices_of(group: type[Group], name: str) -> tuple | None:
    hint = get_type_hints(group)[name]
    return group.choices.get(name) or (get_args(hint) if get_origin(hint) is Literal else None)


def describe(group: type[Group], name: str) -> str:
    """What a setting accepts, in words, for error messages."""
    choices = choices_of(group, name)
    base, optional = base_type(get_type_hints(group)[name])
    words = {int: "a whole number", float: "a number", bool: "true or false", str: "text", Path: "a path"}
    return (f"one of {', '.join(map(str, choices))}" if choices else words[base]) + (" or null" if optional else "")


def _loaded(group: type[Group], name: str, value: Any) -> Any:
    """A YAML value as its field's type: text as a path, a whole number as a float."""
    base, _ = base_type(get_type_hints(group)[name])
    if base is Path and isinstance(value, str):
        return Path(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
