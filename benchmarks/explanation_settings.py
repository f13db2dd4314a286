"""Which Integrated Gradients steps and Occlusion stride to ship: faithfulness and time per setting.

    python -m benchmarks.explanation_settings [--data ../shared/data/ham10000] [--images 16]

For each setting, on every k-th image of the bundled model's committed test ids: the deletion
and insertion areas (train/explanations.py) and the seconds per image on this machine. The
shipped settings (skinlesion/explain.py) should be the cheapest whose areas are within noise
of the best.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from skinlesion import Predictor
from skinlesion.data import read_rgb
from skinlesion.explain import INTEGRATED_GRADIENTS, OCCLUSION, SHIPPED
from skinlesion.transforms import model_input
from train.explanations import curves, input_map

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [(INTEGRATED_GRADIENTS, "ig_steps", n) for n in (8, 16, 32)] + \
           [(OCCLUSION, "occlusion_stride", n) for n in (8, 16, 24)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.explanation_settings", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ham10000")
    p.add_argument("--images", type=int, default=16)
    args = p.parse_args(argv)
    predictor = Predictor.from_pretrained()
    ids = (ROOT / "tests" / "fixtures" / f"{predictor.task.key}_test_ids.txt").read_text().split()
    paths = [args.data / "images" / f"{i}.jpg" for i in ids[::max(1, len(ids) // args.images)][:args.images]]
    xs = [model_input([read_rgb(p)], predictor.spec) for p in paths]
    print(f"{predictor.spec.architecture} at {predictor.spec.input_size} px, {len(xs)} test images, "
          f"{torch.get_num_threads()} threads\n")
    print("| method | setting | deletion area (lower is better) | insertion area (higher) | seconds per image |")
    print("|---|---|---|---|---|")
    for method, name, value in SETTINGS:
        settings = replace(SHIPPED, **{name: value})
        used = settings.stride(predictor.spec.input_size)
        areas, seconds = [], []
        for x in xs:
            with torch.inference_mode():
                index = int(predictor.primary(x).argmax())
            started = time.perf_counter()
            heat = input_map(predictor.primary, x, method, index, settings)
            seconds.append(time.perf_counter() - started)
            areas.append(curves(predictor.primary, x, heat.flatten().argsort(descending=True), index,
                                predictor.rule.temperature))
        deletion, insertion = np.mean(areas, axis=0)
        mark = " (shipped)" if value == getattr(SHIPPED, name) else ""
        actual = f" ({used} at {predictor.spec.input_size} px)" if method == OCCLUSION and used != value else ""
        print(f"| {method} | {name} = {value}{actual}{mark} | {deletion:.3f} | {insertion:.3f} "
              f"| {np.median(seconds):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
