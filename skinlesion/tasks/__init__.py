"""The task registry. Every module of this package that defines `TASK = Task(...)` is a task:
adding a third one is adding one file; nothing outside the module names it.

The default task (the one whose `Task.default` is set) is what the page shows first and what
the API, `Predictor.from_pretrained()` and `python -m train` use when no task is named.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import BENIGN, DEFECT, HIGH_RISK, MALIGNANT, PRE_MALIGNANT, ClassInfo, Task


def _discover() -> dict[str, Task]:
    found = [getattr(importlib.import_module(f"{__name__}.{m.name}"), "TASK", None)
             for m in pkgutil.iter_modules(__path__) if m.name != "base"]
    tasks = sorted((t for t in found if isinstance(t, Task)), key=lambda t: (not t.default, t.key))
    if sum(t.default for t in tasks) != 1:
        raise ImportError(f"exactly one task must be the default; found {[t.key for t in tasks if t.default]}")
    return {t.key: t for t in tasks}


TASKS: dict[str, Task] = _discover()   # the default task first
DEFAULT_TASK: str = next(iter(TASKS))


def get_task(key: str | None = None) -> Task:
    """The task called `key` (None: the default one)."""
    try:
        return TASKS[key or DEFAULT_TASK]
    except KeyError:
        raise ValueError(f"unknown task {key!r}; known tasks: {', '.join(TASKS)}") from None


__all__ = ["TASKS", "DEFAULT_TASK", "get_task", "Task", "ClassInfo",
           "MALIGNANT", "PRE_MALIGNANT", "BENIGN", "DEFECT", "HIGH_RISK"]
