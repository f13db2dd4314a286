"""The answering network on ONNX Runtime: a runtime other than PyTorch for the answers (the
batch path, the command line, the answers of the page). Heat-maps are drawn in PyTorch: they need
gradients (Grad-CAM's from the export's own last-stage output, through the head alone).

A model folder may ship `model.onnx` beside its safetensors (`python -m train.onnx FOLDER`): the
whole answering network (members and views, as `Ensemble`) with a dynamic batch, whose outputs
are the logits and, from the same pass, the features the trust parts read (each stage's
per-channel statistics and the pooled features: trust/features.py) and the primary's last-stage
output (ACTIVATION), so that one ONNX pass gives what one PyTorch pass gives. config.json
records it:

    "onnx": {"file": "model.onnx", "opset": 17,
             "outputs": ["logits", "blocks.0", …, "pooled", "activation"], "parity": {…}}

A folder without the key answers in PyTorch, as before.
"""
from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

ONNX_KEY = "onnx"
ONNX_FILE = "model.onnx"
OPSET = 17
LOGITS = "logits"
# the primary model's last-stage output of its plain view, from which Grad-CAM's map is drawn
# without another pass (explain.GradCam.from_activation); exports without it draw from an eager pass
ACTIVATION = "activation"
# auto: ONNX Runtime when the folder ships it, else torch; torch: PyTorch, on the CPU as a frozen
# TorchScript graph (frozen.py); eager: PyTorch's modules as they are
ENGINES = ("auto", "torch", "onnx", "eager")


class Exported(torch.nn.Module):
    """What is exported: the answering network's logits, the features of its primary pass,
    recorded by the Predictor's own trust tap, and, when `names` ends with ACTIVATION, the
    primary's last-stage output of that pass, kept by the Predictor's GradCam (the hooks are
    traced into the graph)."""

    def __init__(self, net: torch.nn.Module, trust, grad_cam, names: Sequence[str]):
        super().__init__()
        self.net, self.trust, self.grad_cam, self.names = net, trust, grad_cam, list(names)

    def forward(self, x: torch.Tensor):
        keeping = self.grad_cam.keeping() if ACTIVATION in self.names else nullcontext()
        with self.trust.recording(), keeping as kept:
            logits = self.net(x)
            features = {**(self.trust.features(last=True) or {}), **({ACTIVATION: kept.activation} if kept else {})}
        return (logits, *[features[name] for name in self.names])


def feature_names(predictor) -> list[str]:
    """The outputs after the logits, in a fixed order: the features the folder's trust parts
    read (none without parts), then the last-stage activation when Grad-CAM can use it."""
    tap = predictor.trust._tap
    return [*([] if tap is None else [*tap.stages, "pooled"]), *([ACTIVATION] if predictor.grad_cam.head else [])]


def export(predictor, path: str | Path, opset: int = OPSET, size: int | None = None) -> dict:
    """Write `predictor`'s answering network to `path` (ONNX, dynamic batch); its config entry."""
    names = feature_names(predictor)
    size = size or predictor.spec.input_size
    example = torch.zeros(2, 3, size, size)
    module = Exported(predictor.net, predictor.trust, predictor.grad_cam, names).eval()
    outputs = [LOGITS, *names]
    with torch.no_grad():
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=outputs,
                          dynamic_axes={name: {0: "batch"} for name in ["input", *outputs]}, opset_version=opset,
                          dynamo=False)
    return {"file": Path(path).name, "opset": opset, "outputs": outputs}


class OnnxNet:
    """An ONNX Runtime session of a folder's exported network: x (n×3×H×W) → logits and the
    trust parts' features, as torch tensors (the Predictor's `_forward` contract)."""

    def __init__(self, path: str | Path, outputs: Sequence[str], threads: int | None = None):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = list(outputs)
        self.names = self.outputs[1:]  # the outputs after the logits
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        found = self.session.run(self.outputs, {self.input: np.ascontiguousarray(x.detach().float().cpu().numpy())})
        named = dict(zip(self.outputs, found))
        features = {name: torch.from_numpy(named[name]) for name in self.names}
        return torch.from_numpy(named[LOGITS]), features or None


def runtime_for(folder: Path | None, config: Mapping, engine: str) -> OnnxNet | None:
    """The folder's ONNX network when `engine` asks for it ("onnx") or allows it ("auto") and the
    folder ships one; None for PyTorch. ValueError for an unknown engine or "onnx" without one."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    entry = config.get(ONNX_KEY)
    path = folder / entry["file"] if folder is not None and entry else None
    if engine in ("torch", "eager") or (engine == "auto" and (path is None or not path.is_file())):
        return None
    if path is None or not path.is_file():
        raise ValueError(f"{folder}: no ONNX model (python -m train.onnx {folder} exports one)")
    return OnnxNet(path, entry["outputs"])
