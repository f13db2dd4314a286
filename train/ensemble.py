"""Make a model folder that answers with several models and mirror views (skinlesion/models/ensemble.py).

    python -m train.ensemble --primary runs/b0-192/model --member runs/lite0-224/model \\
        --views plain hflip --data ../shared/data/ham10000 --out runs/ensemble/model
    python -m train.evaluate --model runs/ensemble/model --data ../shared/data/ham10000

Copies the primary folder (its model explains, and feeds the input check and the similar cases),
copies each member's weights and config into OUT/members/<name>, fits every model's temperature
alone on its plain validation outputs (as the ensemble runs it: the primary's input, resized
to the member's size), writes the "ensemble" entry of OUT/config.json, and refits the folder's
temperature on what the whole ensemble answers (so it can teach at once: train/distill.py). `train.evaluate`
then fits the whole decision rule — temperature, class bias, thresholds, prediction sets — and
the input check on what the ensemble outputs. The members must have been trained on the
primary's split (the same data and seed): their validation images are the primary's.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from skinlesion.decision import fit_temperature
from skinlesion.models.ensemble import ENSEMBLE_KEY, VIEWS, Ensemble, average, load_ensemble
from skinlesion.models.network import WEIGHTS_FILE
from skinlesion.models.onnx import ONNX_FILE, ONNX_KEY
from skinlesion.models.spec import CONFIG_FILE, ModelSpec, update_config
from skinlesion.transforms import model_input

from .device import pick_device
from .splits import prepare_splits

log = logging.getLogger("train.ensemble")
MEMBERS = "members"


@torch.no_grad()
def member_outputs(net: Ensemble, spec: ModelSpec, images: Sequence[np.ndarray], device: torch.device,
                   batch_size: int = 32) -> np.ndarray:
    """Every member's and view's log_softmax(z / T) (Ensemble.member_log_probs), resized as the
    Predictor does: passes × images × classes, float32."""
    parts = []
    net.eval()
    for start in range(0, len(images), batch_size):
        x = model_input(images[start:start + batch_size], spec, device)
        parts.append(torch.stack(net.member_log_probs(x)).cpu())
    return torch.cat(parts, 1).numpy() if parts else np.zeros((net.passes, 0, spec.num_classes), np.float32)


def tempered_average(outputs: Sequence[np.ndarray], temperatures: Sequence[float]) -> np.ndarray:
    """Passes taken at temperature 1 (`member_outputs`), each retempered at its model's
    temperature and averaged as the ensemble averages them (log_softmax(z)/T differs from z/T by
    a constant per row, which the log_softmax removes): images × classes."""
    return average([torch.log_softmax(torch.as_tensor(o) / t, -1) for o, t in zip(outputs, temperatures)]).numpy()


def run_name(folder: Path) -> str:
    """runs/<name>/model → <name>; any other folder by its own name (the folder ships, paths do not)."""
    return folder.parent.name if folder.name == "model" else folder.name


def assemble(primary: Path, members: list[Path], out: Path) -> list[str]:
    """OUT: a copy of the primary folder, each member's weights and config in OUT/members/<name>."""
    if out.resolve() != primary.resolve():
        shutil.copytree(primary, out, dirs_exist_ok=True)
    names = []
    for member in members:
        name = run_name(member)
        target = out / MEMBERS / name
        target.mkdir(parents=True, exist_ok=True)
        for file in (WEIGHTS_FILE, CONFIG_FILE):
            shutil.copy2(member / file, target / file)
        names.append(f"{MEMBERS}/{name}")
    return names


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.ensemble", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--primary", type=Path, required=True, help="model folder whose model explains")
    p.add_argument("--member", type=Path, action="append", default=[], help="further model folders")
    p.add_argument("--views", nargs="+", default=["plain"], choices=list(VIEWS), help="starting with plain")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")

    names = assemble(args.primary, args.member, args.out)
    (args.out / ONNX_FILE).unlink(missing_ok=True)  # the primary's alone: python -m train.onnx exports the ensemble
    unfitted = {"temperature": 1.0, "views": args.views, "members": [{"folder": n, "temperature": 1.0} for n in names]}
    update_config(args.out, **{ONNX_KEY: None, ENSEMBLE_KEY: unfitted})
    net, spec = load_ensemble(args.out)
    device = pick_device(args.device)
    splits = prepare_splits(spec.task.load(args.data), spec.input_size, spec.training.get("seed", 0), None,
                            spec.codes, preprocessing=spec.preprocessing)
    val = splits["val"]
    # One pass over validation, every model and view at temperature 1 (model-major): each model's
    # temperature is fitted alone on its plain view; the folder's rule temperature on the average of
    # every pass retempered, i.e. on what the folder now answers (the primary's was fitted on its
    # plain logits), so a fresh folder's probabilities are calibrated as a --teacher's soft targets
    # (train/distill.py) before train.evaluate refits the whole rule.
    outputs = member_outputs(net.to(device), spec, val.images, device)
    temperatures = [fit_temperature(outputs[m * len(args.views)], val.labels) for m in range(len(names) + 1)]
    settings = {"temperature": temperatures[0], "views": args.views,
                "members": [{"folder": n, "temperature": t} for n, t in zip(names, temperatures[1:])]}
    folder_temperature = fit_temperature(
        tempered_average(outputs, [t for t in temperatures for _ in args.views]), val.labels)
    update_config(args.out, temperature=folder_temperature, **{ENSEMBLE_KEY: settings})
    for name, t in zip(["primary", *names], temperatures):
        log.info("%s: temperature %.3f", name, t)
    log.info("the folder's temperature: %.3f (the rest of its rule is the primary's until train.evaluate)",
             folder_temperature)
    log.info("wrote %s; now run python -m train.evaluate --model %s --data %s", args.out, args.out, args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
