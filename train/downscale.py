"""A copy of a HAM10000 data folder at a fraction of its resolution: how much the image's detail is
worth to the model, measured by training and evaluating the same recipe on each copy.

    python -m train.downscale ../shared/data/ham10000 --factor 2 --out /tmp/ham10000-half

Every image is reduced by FACTOR on each side (PIL's `Image.reduce`: the mean of each FACTOR×FACTOR
box), its lesion mask likewise (then thresholded at 127, as the masks are read); the metadata is
copied as it is, so the split drawn from the seed is the same. The data stays outside the project.
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from PIL import Image

from skinlesion.tasks.dermoscopy import METADATA_FILE


def downscale(data: Path, factor: int, out: Path) -> int:
    """Write the reduced copy of `data` to `out`; return how many images it holds."""
    if not (data / METADATA_FILE).is_file():
        raise SystemExit(f"{data}: no {METADATA_FILE} (a HAM10000 data folder is expected)")
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(data / METADATA_FILE, out / METADATA_FILE)
    n = 0
    for source in sorted(data.rglob("*.jpg")) + sorted(data.rglob("*.png")):
        target = out / source.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        mask = source.suffix == ".png"
        with Image.open(source) as image:
            small = image.convert("L" if mask else "RGB").reduce(factor)
            if mask:  # lesion = pixel > 127
                small.point(lambda v: 255 if v > 127 else 0).save(target)
            else:
                small.save(target, quality=95)
                n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.downscale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", type=Path, help="a HAM10000 data folder")
    p.add_argument("--factor", type=int, required=True, help="each side divided by this (2: a quarter of the pixels)")
    p.add_argument("--out", type=Path, required=True, help="the folder to write (outside the project)")
    args = p.parse_args(argv)
    if args.factor < 2:
        p.error("--factor must be 2 or more")
    print(f"{args.out}: {downscale(args.data, args.factor, args.out)} images at 1/{args.factor} of each side")
    return 0


if __name__ == "__main__":
    sys.exit(main())
