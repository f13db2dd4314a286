"""python -m train.int8 FOLDER --data DATA --split SPLIT [--calibration 256] [--configs …] [--out FILE]

Measures whether a model folder's ONNX network (FOLDER/model.onnx, fp32) can be served as INT8:
ONNX Runtime static quantization (QDQ, per-channel QInt8 weights), calibrated on `--calibration`
training-split images prepared exactly as serving prepares them (`Predictor.prepare(path).x`).

Each configuration (--configs) is "METHOD-ACTIVATIONS[-dw][-ends][-early<k>]": the calibration
method (minmax, percentile, entropy), the activations' type (u8: QUInt8, s8: QInt8), and what
stays fp32: "dw" the depthwise convolutions, "ends" the first convolution and the classifier,
"early<k>" every node up to the k-th stage the input checks read. "openvino-bf16" measures the other
reduced precision at hand instead: the same fp32 file compiled by OpenVINO (pip install openvino;
not a requirement of the app) with bfloat16 inference, its default on CPUs with AMX or AVX-512
BF16. Only the network's own ops are
quantized (Conv, Gemm, Clip, Add); the checks' per-channel statistics are computed in fp32, but
on the (dequantized) stage outputs, so the checks see the quantization error of the stages before
them: their Mahalanobis distances are what INT8 must not move (measured, hence "early<k>").

Everything is answered by the same Predictor code (the folder's own fp32 decision rule, set and
input checks; only `.runtime` differs) on the split file's "test" rows: balanced accuracy,
melanoma sensitivity, 90% prediction-set coverage, answered (`known`) and familiar shares, the
share whose decided class equals fp32 ONNX's and the largest probability change; then the
throughput of the batch forward pass alone (batches of 8 and 32, fp32 ONNX, INT8 and PyTorch,
interleaved in one run, median of rounds). Why: INT8 ships only if it answers as fp32 does —
every rate within RATE_TOLERANCE of fp32's and the decided class the same on AGREEMENT of the
images — and only then is its speed worth having. `--out` writes the best configuration that
passes: the most answers as fp32's, then the fastest (exit code 1, and nothing written, when none does).
"""
from __future__ import annotations

import argparse
import copy
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from skinlesion import Predictor
from skinlesion.data import read_split
from skinlesion.models.onnx import LOGITS, ONNX_FILE, ONNX_KEY, OnnxNet
from skinlesion.trust.features import POOLED

CONFIGS = ["minmax-u8", "minmax-s8", "percentile-u8", "entropy-u8", "minmax-u8-dw", "minmax-u8-ends",
           "minmax-u8-early1", "minmax-s8-early1", "entropy-u8-early1", "entropy-u8-early1-dw",
           "entropy-u8-early1-ends", "entropy-u8-early2"]
METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
ACTIVATIONS = {"u8": QuantType.QUInt8, "s8": QuantType.QInt8}
OP_TYPES = ["Conv", "Gemm", "Clip", "Add"]  # the network's ops; not the statistics the input checks read
RATE_TOLERANCE = 0.01  # balanced accuracy, melanoma sensitivity, coverage, answered and familiar shares
AGREEMENT = 0.995      # share of images whose decided class must equal fp32's
BATCHES, ROUNDS, CALIBRATION_BATCH, EVAL_BATCH = (8, 32), 7, 8, 32
KEEP_FP32 = ["WeightBiasQuantization"]  # ONNX Runtime optimizers an INT8 session runs without
RATES = ("balanced_accuracy", "melanoma_sensitivity", "coverage", "answered", "familiar")
OPENVINO = "openvino-bf16"


class Batches(CalibrationDataReader):
    """The calibration inputs in batches; a range of them at a time (ORT's CalibStridedMinMax)."""

    def __init__(self, batches: list[np.ndarray], name: str):
        self.batches, self.name = batches, name
        self.set_range(0, len(batches))

    def __len__(self) -> int:
        return len(self.batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.next, self.end = start_index, end_index

    def get_next(self) -> dict | None:
        if self.next >= self.end:
            return None
        self.next += 1
        return {self.name: self.batches[self.next - 1]}


def tapped(model: onnx.ModelProto) -> list[str]:
    """The nodes whose outputs the input checks' stage statistics read, in graph order: walked back
    from those outputs through the statistics' own ops to the first Conv or Add."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found, todo = set(), [o.name for o in model.graph.output if o.name not in (LOGITS, POOLED)]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and node.op_type in ("Conv", "Add"):
            found.add(node.name)
        elif node is not None:
            todo += node.input
    return [n.name for n in model.graph.node if n.name in found]


def excluded(model: onnx.ModelProto, parts: list[str]) -> list[str]:
    """The nodes a configuration keeps in fp32: "dw" the depthwise convolutions, "ends" the first
    convolution and the classifier, "early<k>" every node up to the k-th tapped stage's output
    (the statistics the input checks read)."""
    nodes, names = list(model.graph.node), []
    convs = [n for n in nodes if n.op_type == "Conv"]
    if "dw" in parts:
        names += [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    if "ends" in parts:
        names += [convs[0].name] + [n.name for n in nodes if n.op_type == "Gemm"]
    for part in parts:
        if part.startswith("early"):
            last = [n.name for n in nodes].index(tapped(model)[int(part[5:]) - 1])
            names += [n.name for n in nodes[:last + 1]]
    return names


def quantize(source: Path, target: Path, config: str, calibration: list[np.ndarray], caches: Path) -> None:
    """Write `config`'s INT8 copy of `source` (already pre-processed) to `target`."""
    method, activations, *parts = config.split("-")
    quantize_static(str(source), str(target), Batches(calibration, "input"), quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=OP_TYPES, per_channel=True, weight_type=QuantType.QInt8,
                    activation_type=ACTIVATIONS[activations], calibrate_method=METHODS[method],
                    nodes_to_exclude=excluded(onnx.load(str(source)), parts),
                    extra_options={"CalibStridedMinMax": 1},  # one batch at a time: bounded memory
                    calibration_cache_path=caches / f"{method}.json")  # one calibration per method


def evaluate(predictor: Predictor, prepared: list, labels: list[str], reference: list | None = None) -> dict:
    """The Predictor's answers on the test images, and how they compare with `reference`'s."""
    answers = [a for start in range(0, len(prepared), EVAL_BATCH)
               for a in predictor.analyse_many(prepared[start:start + EVAL_BATCH])]
    decided, truth = np.array([a.decided for a in answers]), np.array(labels)
    recall = {c: float(np.mean(decided[truth == c] == c)) for c in predictor.codes if np.any(truth == c)}
    found = {"balanced_accuracy": float(np.mean(list(recall.values()))), "melanoma_sensitivity": recall.get("mel"),
             "coverage": float(np.mean([t in a.prediction_set for t, a in zip(labels, answers)])),
             "answered": float(np.mean([a.known for a in answers])),
             "familiar": float(np.mean([a.familiar for a in answers])), "answers": answers}
    reference = reference or answers
    found["same_class"] = float(np.mean([a.decided == r.decided for a, r in zip(answers, reference)]))
    found["max_dp"] = max(abs(a.probabilities[c] - r.probabilities[c])
                          for a, r in zip(answers, reference) for c in a.probabilities)
    return found


def passes(found: dict, fp32: dict) -> bool:
    """The project's acceptance rule for INT8 (the folder's fp32 decision rule throughout)."""
    return all(abs(found[k] - fp32[k]) <= RATE_TOLERANCE for k in RATES) and found["same_class"] >= AGREEMENT


def throughput(forwards: dict, x: torch.Tensor) -> dict:
    """Images/s of each forward pass at each batch size of BATCHES: every round runs every pass once
    (interleaved, so a busy machine slows them alike); the median round."""
    times = {(name, b): [] for name in forwards for b in BATCHES}
    with torch.inference_mode():
        for name, forward in forwards.items():  # warm-up
            forward(x[:BATCHES[0]])
        for _ in range(ROUNDS):
            for name, forward in forwards.items():
                for b in BATCHES:
                    start = time.perf_counter()
                    forward(x[:b])
                    times[name, b].append(time.perf_counter() - start)
    return {key: key[1] / statistics.median(t) for key, t in times.items()}


class OpenVinoNet:
    """The folder's fp32 ONNX file compiled by OpenVINO in bfloat16, behind OnnxNet's call contract
    (x → logits and the trust parts' features as torch tensors). Measurement only: the app serves
    ONNX Runtime."""

    def __init__(self, path: Path, outputs: list[str]):
        import openvino  # optional: only this configuration needs it
        config = {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self.model = openvino.Core().compile_model(str(path), "CPU", config)
        self.request, self.outputs = self.model.create_infer_request(), outputs
        self.names = outputs[1:]  # the outputs after the logits, as OnnxNet's

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        found = self.request.infer({0: np.ascontiguousarray(x.detach().float().cpu().numpy())}).to_tuple()
        named = {name: value.copy() for port, value in zip(self.model.outputs, found) for name in port.get_names()}
        return torch.from_numpy(named[LOGITS]), {n: torch.from_numpy(named[n]) for n in self.names} or None


def session(path: Path, options: ort.SessionOptions | None = None) -> ort.InferenceSession:
    """An INT8 model's session, with the fp32 nodes left fp32: ONNX Runtime's WeightBiasQuantization
    would otherwise quantize (per tensor) the float weights of a node between a DequantizeLinear and a
    QuantizeLinear when the session loads, which is every excluded depthwise convolution."""
    return ort.InferenceSession(str(path), options or ort.SessionOptions(), providers=["CPUExecutionProvider"],
                                disabled_optimizers=KEEP_FP32)


def kernels(path: Path) -> str:
    """The ops ONNX Runtime runs for `path` once it has fused the Q/DQ pairs (QLinearConv, QGemm …)."""
    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.optimized_model_filepath, options.log_severity_level = f"{tmp}/optimized.onnx", 3
        session(path, options)
        ops = Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
    return ", ".join(f"{count} {op}" for op, count in ops.most_common() if op.startswith(("Q", "Dequantize", "Conv")))


def table(rows: list[tuple[str, dict | None, float | None, str]], speed: dict) -> str:
    """One line per runtime: its answers (none for PyTorch, timed only), its speed and size."""
    widths = {"balanced_accuracy": 7, "melanoma_sensitivity": 8, "coverage": 8, "answered": 8, "familiar": 8,
              "same_class": 8, "max_dp": 7}
    first = max(len(name) for name, *_ in rows)
    head = (f"{'configuration':<{first}} {'bal.acc':>7} {'mel.sens':>8} {'coverage':>8} {'answered':>8} "
            f"{'familiar':>8} {'same cls':>8} {'max Δp':>7} {'img/s b8':>8} {'img/s b32':>9} {'MB':>5}  pass")
    lines = [head, "-" * len(head)]
    for name, found, size, verdict in rows:
        cells = [f"{found[k]:>{w}.4f}" if found else f"{'-':>{w}}" for k, w in widths.items()]
        lines.append(f"{name:<{first}} {' '.join(cells)} {speed[name, 8]:>8.1f} {speed[name, 32]:>9.1f} "
                     f"{'-' if size is None else size:>5}  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.int8", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path, help="the model folder (its model.onnx is quantized)")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--split", type=Path, required=True, help="the training split file (image_id, split)")
    p.add_argument("--calibration", type=int, default=256, help="training images to calibrate on")
    p.add_argument("--configs", nargs="+", default=CONFIGS, help="configurations to measure")
    p.add_argument("--out", type=Path, help="write the best passing INT8 model here")
    args = p.parse_args(argv)

    torch_predictor = Predictor.from_pretrained(args.folder, engine="torch")
    entry = torch_predictor.spec.config[ONNX_KEY]
    source = args.folder / entry.get("file", ONNX_FILE)
    split = read_split(args.split)
    records = torch_predictor.task.load(args.data)
    test = [r for r in records if split.get(r.image_id) == "test"]
    train = sorted((r for r in records if split.get(r.image_id) == "train"), key=lambda r: r.image_id)
    chosen = random.Random(0).sample(train, min(args.calibration, len(train)))
    print(f"preparing {len(chosen)} calibration and {len(test)} test images …", flush=True)
    inputs = torch.cat([torch_predictor.prepare(r.path).x for r in chosen]).numpy()
    calibration = [inputs[i:i + CALIBRATION_BATCH] for i in range(0, len(inputs), CALIBRATION_BATCH)]
    prepared, labels = [torch_predictor.prepare(r.path) for r in test], [r.label for r in test]

    def on(path: Path) -> Predictor:  # the same Predictor, its passes on `path` (as train/onnx.py)
        other = copy.copy(torch_predictor)
        other.runtime, other.engine = OnnxNet(path, entry["outputs"]), "onnx"
        if path != source:
            other.runtime.session = session(path, other.runtime.session.get_session_options())
        return other

    fp32 = evaluate(on(source), prepared, labels)
    rows = [("pytorch", None, None, ""), ("fp32 onnx", fp32, round(source.stat().st_size / 1e6, 1), "")]
    forwards = {"pytorch": torch_predictor._forward, "fp32 onnx": on(source)._forward}
    results = {}
    with tempfile.TemporaryDirectory(prefix="int8.") as tmp:
        tmp = Path(tmp)
        pre = tmp / "pre.onnx"
        quant_pre_process(str(source), str(pre))
        for config in args.configs:
            if config == OPENVINO:
                print(f"answering: {config} …", flush=True)
                other = copy.copy(torch_predictor)
                other.runtime, other.engine = OpenVinoNet(source, entry["outputs"]), "onnx"
                path = source
            else:
                print(f"quantizing and answering: {config} …", flush=True)
                path = tmp / f"{config}.onnx"
                quantize(pre, path, config, calibration, tmp)
                print(f"  runs: {kernels(path)}", flush=True)
                other = on(path)
            found = evaluate(other, prepared, labels, fp32["answers"])
            results[config] = (found, path)
            rows.append((config, found, round(path.stat().st_size / 1e6, 1), "yes" if passes(found, fp32) else "no"))
            forwards[config] = other._forward
        print("timing the forward passes …", flush=True)
        speed = throughput(forwards, torch.cat([q.x for q in prepared[:max(BATCHES)]]))
        print(f"\n{table(rows, speed)}\n")
        print(f"{len(test)} test images; rule: every rate within {RATE_TOLERANCE} of fp32 ONNX's (fp32 decision "
              f"rule) and the same decided class on >= {AGREEMENT:.1%}; threads {torch.get_num_threads()}")
        if OPENVINO in results:
            print(f"{OPENVINO}: {'passes' if passes(results[OPENVINO][0], fp32) else 'does not pass'} (a measurement:"
                  " the app serves ONNX Runtime)")
        passing = [c for c in results if c != OPENVINO and passes(results[c][0], fp32)]  # INT8 files, for --out
        if not passing:
            print("no INT8 configuration passes: INT8 does not ship")
            return 1 if args.out else 0
        best = max(passing, key=lambda c: (results[c][0]["same_class"], speed[c, max(BATCHES)]))
        print(f"best passing configuration: {best}")
        if args.out:
            args.out.write_bytes(results[best][1].read_bytes())
            print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
