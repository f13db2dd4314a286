"""The answering network as one frozen TorchScript graph: PyTorch's passes without a heat-map.

The same module the ONNX export traces (`onnx.Exported`: the answering network's logits and, from
the same pass, the features the trust parts read, the tap's hooks traced into the graph) is
traced once, frozen and optimised for inference (`torch.jit.freeze`, `optimize_for_inference`:
batch norms folded into the convolutions, oneDNN's pre-packed weights). On these 2 CPU cores an
EfficientNet-Lite0 at 224 px runs about 1.5 to 2 times as many images per second this way as
eager modules (`python -m benchmarks.engines`), which is what lets the mirror views run within
the batch path's budget in PyTorch. Its outputs include the primary's last-stage output, from
which a Grad-CAM map is drawn by the head alone, eagerly (explain.GradCam.from_activation): an
analysis with its map costs about what one without it costs.

Why TorchScript and not torch.compile: compile's CPU backend builds C++ kernels at the first call
of every new batch shape (tens of seconds on 2 cores, against the app's 10 s cold start), where a
frozen trace takes about 1.5 s per network and serves any batch size. It is built at the first
call, not at load (a Predictor used only for heat-maps never pays for it); should tracing fail,
or PyTorch drop TorchScript, the eager modules answer instead (`engine="eager"` asks for them).
"""
from __future__ import annotations

import logging
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import torch

from .onnx import Exported

log = logging.getLogger(__name__)
# A batch runs as this many stacks side by side: small stacks keep a CPU core's caches warm, and
# on 2 cores two stacks of 4 answered 48-50 images/s (three views of a Lite0 at 224 px) where one
# stack of 8 answered 32-41 and two stacks of 4 in turn 34-46.
STREAMS = 2


class FrozenNet:
    """x (n×3×H×W, the Predictor's input) → logits and the trust parts' features, as OnnxNet
    (the Predictor's `_forward` contract), from a frozen trace of `Exported(net, trust, grad_cam,
    names)`."""

    def __init__(self, net: torch.nn.Module, trust, grad_cam, names: Sequence[str], size: int):
        self.module = Exported(net, trust, grad_cam, names).eval()
        self.names, self.size = list(names), size
        self._graph: torch.jit.ScriptModule | None = None
        self._failed = False
        self._lock, self._pool_lock = threading.Lock(), threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    def graph(self) -> torch.jit.ScriptModule | None:
        """The frozen graph, traced at the first call (None when tracing failed: eager answers)."""
        with self._lock:
            if self._graph is None and not self._failed:
                example = torch.zeros(2, 3, self.size, self.size).contiguous(memory_format=torch.channels_last)
                try:
                    with warnings.catch_warnings(), torch.no_grad():
                        warnings.simplefilter("ignore")  # TorchScript's deprecation notices, on every call
                        traced = torch.jit.trace(self.module, (example,), check_trace=False)
                        self._graph = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                except Exception as error:  # an op TorchScript cannot trace, or TorchScript gone
                    log.warning("the answering network could not be frozen (%s); it answers eagerly", error)
                    self._failed = True
            return self._graph

    def run(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The graph's outputs for one stack: logits, then the features in `names`' order."""
        graph = self.graph()
        with torch.inference_mode():  # per thread: the pool's threads need their own
            return list((graph or self.module)(x))

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        if len(x) < STREAMS:
            outputs = self.run(x)
        else:  # the halves of a batch side by side (STREAMS), each row's answer its own as before
            with self._pool_lock:
                self._pool = self._pool or ThreadPoolExecutor(STREAMS, thread_name_prefix="frozen")
            parts = list(self._pool.map(self.run, x.tensor_split(STREAMS)))
            outputs = [torch.cat(column) for column in zip(*parts)]
        logits, *features = outputs
        return logits, {name: f.float().cpu() for name, f in zip(self.names, features)} or None
