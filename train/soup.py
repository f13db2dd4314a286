"""A model soup: several fine-tunings of one model, their weights averaged into one network
(Wortsman et al. 2022, "Model soups"): what an ensemble of them knows, at one model's cost.

    python -m train.soup assets/models/ham10000 runs/soup-a/model runs/soup-b/model \\
        --data ../shared/data/ham10000 --out runs/soup/model
    python -m train.ensemble --primary runs/soup/model --views plain hflip vflip ... (then train.evaluate)

The ingredients must be one architecture with one set of classes and preprocessing, and share a
starting folder (one is the folder the others continued, or they continued the same one: their
config.json lineage says so), so that their weights lie in one basin where an average still
answers. Greedy (the paper's recipe; `--uniform` averages them all): the ingredients ordered by
validation balanced accuracy, the best first, and each one after kept when the soup with it
scores at least what the soup without it did. The score is the project's rule for choosing: the
balanced accuracy on validation under a decision rule fitted there (skinlesion/decision.py), on
the views the folder will answer with (`--views`). Nothing is read from test.

Writes a single-model folder: the averaged weights (batch-norm statistics averaged as the rest)
and config.json with the best kept ingredient's training record plus `soup` (each ingredient's
folder, sha256 and score, whether it was kept). The rule, checks and sets are fitted afterwards,
as for any model (train.ensemble for the views, then train.evaluate).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from skinlesion.decision import DecisionRule, fit_temperature
from skinlesion.models.ensemble import VIEWS, Ensemble
from skinlesion.models.network import WEIGHTS_FILE, load_model_folder, save_model_folder
from skinlesion.models.spec import ModelSpec
from skinlesion.ops.record import sha256

from .device import pick_device
from .ensemble import member_outputs, run_name, tempered_average
from .metrics import classification_report
from .splits import prepare_splits

log = logging.getLogger("train.soup")


class SoupError(ValueError):
    """The ingredients cannot be averaged: other networks, classes or preprocessing, or no shared start."""


def starts(spec: ModelSpec, folder: Path) -> set[str]:
    """The sha256 of the folder's own weights and of every folder it continued (its lineage)."""
    return {sha256(folder / WEIGHTS_FILE), *(step["sha256"] for step in spec.training.get("lineage") or [])}


def check(specs: list[ModelSpec], folders: list[Path]) -> None:
    first = specs[0]
    for spec, folder in zip(specs[1:], folders[1:]):
        if (spec.architecture, spec.codes, spec.preprocessing) != (first.architecture, first.codes,
                                                                  first.preprocessing):
            raise SoupError(f"{folder} is not {folders[0]}'s network, classes and preprocessing "
                            f"({spec.architecture} against {first.architecture})")
    if not set.intersection(*(starts(s, f) for s, f in zip(specs, folders))):
        raise SoupError("the ingredients share no starting folder (config.json lineage): a soup averages "
                        "fine-tunings of one model")


def average(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The float tensors' mean; counters (batch-norm's num_batches_tracked) are the first's."""
    return {k: torch.stack([s[k].float() for s in states]).mean(0).to(v.dtype) if v.is_floating_point() else v
            for k, v in states[0].items()}


def score(model: torch.nn.Module, spec: ModelSpec, images, labels: np.ndarray, views: list[str],
          device: torch.device) -> float:
    """Validation balanced accuracy under a rule fitted on validation, on `views` averaged."""
    outputs = member_outputs(Ensemble([model], views=views).to(device), spec, images, device)
    temperature = fit_temperature(outputs[0], labels)
    logits = tempered_average(outputs, [temperature] * len(views))
    rule, _ = DecisionRule.fit(logits, labels, spec.codes, spec.task.high_risk_codes)
    calibrated = rule.probabilities(logits)
    return classification_report(calibrated, labels, spec.codes, rule.decide(calibrated))["balanced_accuracy"]


def greedy(scores: list[float], soup_score: Callable[[list[int]], float], names: list[str]) -> tuple[list[int], float]:
    """The greedy soup: the ingredients by score, best first; each kept when the soup with it
    scores at least what the soup without it did. Returns the kept indices and the soup's score."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept, best = [order[0]], scores[order[0]]
    for i in order[1:]:
        candidate = soup_score([*kept, i])
        log.info("with %s: %.4f (%s)", names[i], candidate, "kept" if candidate >= best else "left out")
        if candidate >= best:
            kept, best = [*kept, i], candidate
    return kept, best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.soup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ingredients", type=Path, nargs="+", help="model folders: fine-tunings of one model")
    p.add_argument("--data", type=Path, required=True, help="the task's data folder")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--views", nargs="+", default=["plain"], choices=list(VIEWS),
                   help="the views the score averages (those the folder will answer with), starting with plain")
    p.add_argument("--uniform", action="store_true", help="average every ingredient (default: greedy)")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    if len(args.ingredients) < 2:
        p.error("a soup needs two ingredients or more")
    try:
        loaded = [load_model_folder(folder) for folder in args.ingredients]
        check([spec for _, spec in loaded], args.ingredients)
    except ValueError as error:  # SoupError, ModelFolderError
        log.error("%s", error)
        return 2
    device = pick_device(args.device)
    spec = loaded[0][1]
    val = prepare_splits(spec.task.load(args.data), spec.input_size, spec.training.get("seed", 0), None,
                         spec.codes, preprocessing=spec.preprocessing)["val"]
    soup = loaded[0][0]  # the averages load into the first network, so its tensors are copied first
    states = [{k: v.clone() for k, v in model.state_dict().items()} for model, _ in loaded]
    scores = [score(model, spec, val.images, val.labels, args.views, device) for model, _ in loaded]
    for folder, s in zip(args.ingredients, scores):
        log.info("%s: validation balanced accuracy %.4f", folder, s)

    def soup_score(members: list[int]) -> float:
        soup.load_state_dict(average([states[k] for k in members]))
        return score(soup, spec, val.images, val.labels, args.views, device)

    if args.uniform:
        kept = sorted(range(len(loaded)), key=lambda i: -scores[i])
        final = soup_score(kept)
    else:
        kept, final = greedy(scores, soup_score, [str(f) for f in args.ingredients])
    soup.load_state_dict(average([states[k] for k in kept]))  # the last soup scored may have been left out
    record = {"method": "uniform" if args.uniform else "greedy", "views": args.views, "val_balanced_accuracy": final,
              "ingredients": [{"folder": run_name(folder), "sha256": sha256(folder / WEIGHTS_FILE),
                               "val_balanced_accuracy": s, "kept": i in kept}
                              for i, (folder, s) in enumerate(zip(args.ingredients, scores))]}
    lead = loaded[kept[0]][1]  # the best ingredient's training record, with the soup's
    save_model_folder(soup, args.out, spec.task, extra={"training": {**lead.training, "soup": record},
                                                        "preprocessing": spec.preprocessing})
    log.info("the soup of %d of %d ingredients: validation balanced accuracy %.4f; wrote %s",
             len(kept), len(loaded), final, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
