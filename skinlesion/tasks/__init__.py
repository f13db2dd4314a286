"""The task registry. Every module of this package that defines `TASK = Task(...)` is a task:
adding a third one is adding one file; nothing outside the module names it.

The default task (the one whose `Task.default` is set) is what the page shows first and what
the API, `Predictor.from_pretrained()` and `python -m train` use when no task is named.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import BENIGN, DEFECT, HIGH_RISK, MALIGNANT, PRE_MALIGNANT, ClassInfo, Task, Verdict


def _discover() -> tuple[dict[str, Task], dict[str, str]]:
    """The tasks (default first, then by key) and their module names as aliases of their keys
    (`--task steel` is `--task neu`)."""
    found = {m.name: getattr(importlib.import_module(f"{__name__}.{m.name}"), "TASK", None)
             for m in pkgutil.iter_modules(__path__) if m.name not in ("base", "verdicts")}
    found = {name: task for name, task in found.items() if isinstance(task, Task)}
    tasks = sorted(found.values(), key=lambda t: (not t.default, t.key))
    if sum(t.default for t in tasks) != 1:
        raise ImportError(f"exactly one task must be the default; found {[t.key for t in tasks if t.default]}")
    return {t.key: t for t in tasks}, {name: t.key for name, t in found.items() if name != t.key}


TASKS, ALIASES = _discover()           # TASKS: the default task first
DEFAULT_TASK: str = next(iter(TASKS))


def get_task(key: str | None = None) -> Task:
    """The task called `key` or by its module's name (None: the default one)."""
    key = key or DEFAULT_TASK
    try:
        return TASKS[ALIASES.get(key, key)]
    except KeyError:
        raise ValueError(f"unknown task {key!r}; known tasks: {', '.join([*TASKS, *ALIASES])}") from None


__all__ = ["TASKS", "ALIASES", "DEFAULT_TASK", "get_task", "Task", "ClassInfo", "Verdict",
           "MALIGNANT", "PRE_MALIGNANT", "BENIGN", "DEFECT", "HIGH_RISK"]
