"""Darker skin and the input checks: python -m benchmarks.darker_skin [--model DIR] [--images 120]

A random sample of HAM10000 images (seed 0), each with every channel scaled down and browned —
red × a, green × a^1.35, blue × a^1.7, for a in 1, 0.75, 0.6, 0.45, 0.35 — as a crude stand-in for
darker skin (the lesion darkens too). Prints, per factor and estimated skin tone
(skinlesion/skintone.py), the share answered (not refused by the modality check) and the share
also familiar. HAM10000 holds too few images of darker skin to measure this on real ones.
"""
from __future__ import annotations

import argparse
import sys
from collections import defaultdict

import numpy as np

from skinlesion import Predictor
from skinlesion.data import read_rgb
from skinlesion.models.markdown import f, table

FACTORS = (1.0, 0.75, 0.6, 0.45, 0.35)


def darker(rgb: np.ndarray, a: float) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) * (a * np.array([1.0, a ** 0.35, a ** 0.7])), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.darker_skin", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="a model folder (default: the bundled dermoscopy model)")
    p.add_argument("--data", default="../shared/data/ham10000")
    p.add_argument("--images", type=int, default=120)
    args = p.parse_args(argv)
    predictor = Predictor.from_pretrained(args.model)
    records = predictor.task.load(args.data)
    chosen = np.random.default_rng(0).choice(len(records), args.images, replace=False)
    counts = defaultdict(lambda: [0, 0, 0])
    for i in chosen:
        rgb = read_rgb(records[i].path)
        for a in FACTORS:
            analysis = predictor.analyse(darker(rgb, a), method=None)
            n = counts[(a, analysis.skin_tone or "not estimated")]
            n[0] += 1
            n[1] += analysis.known
            n[2] += analysis.known and analysis.familiar
    print(table(["factor a", "estimated skin tone", "images", "answered", "familiar"],
                [[a, tone, n, f(k / n), f(fam / n)] for (a, tone), (n, k, fam) in
                 sorted(counts.items(), key=lambda item: (-item[0][0], item[0][1]))]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
