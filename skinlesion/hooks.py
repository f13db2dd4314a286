"""Forward hooks that stay on a model and act only for the thread that asked: the FeatureTap
(trust/features.py) records features, GradCam (explain.py) keeps an activation for its
gradient. Registering and removing hooks while another thread runs the model is not safe in
PyTorch, so the hooks are registered once and each thread's state lives in a thread-local."""
from __future__ import annotations

import copy
import threading
from typing import Callable

import torch


class ThreadLocalHooks:
    """Forward hooks on modules with per-thread state in `self._local`."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._handles: list = []

    def hook(self, module: torch.nn.Module, function: Callable) -> None:
        self._handles.append(module.register_forward_hook(function))

    def __deepcopy__(self, memo: dict) -> "ThreadLocalHooks":
        """A deep copy of the model copies its hooks with it: they stay inert there (no thread
        of the copy is ever inside this object's context), and a thread-local cannot be copied."""
        copied = copy.copy(self)
        copied._local = threading.local()
        return copied

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
