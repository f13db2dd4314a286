"""python -m skinlesion predict PATH... --out results.csv [--task TASK] [--model DIR]

Classifies many images — files, folders, globs, zip archives — with the task's bundled model
(or --model), in batches, writing one CSV row per file as it goes (skinlesion/batch.py says
the layout). Long images are classified by tiles with --tile (skinlesion/tiles.py). An
unreadable file gets its error in the `error` column and the run goes on; the
exit code is 1 only when no file could be read.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from .batch import BATCH_SIZE, batch_rows, expand, write_csv
from .models.spec import ModelFolderError
from .predictor import Predictor
from .tasks import ALIASES, DEFAULT_TASK, TASKS, get_task


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m skinlesion", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="classify many images into a CSV")
    predict.add_argument("paths", nargs="+", help="image files, folders, globs (quoted) or .zip archives")
    predict.add_argument("--out", type=Path, required=True, help="CSV to write")
    predict.add_argument("--task", default=DEFAULT_TASK, choices=[*TASKS, *ALIASES],
                         help="whose bundled model (default: %(default)s)")
    predict.add_argument("--model", help="a model folder or Hub repo id instead of the bundled model")
    predict.add_argument("--tile", action=argparse.BooleanOptionalAction, default=None,
                         help="classify long images (strips) by overlapping tiles; the answer is the worst tile's "
                              "(default: on for tasks that tile large images, such as steel)")
    predict.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    args = p.parse_args(argv)

    try:
        predictor = Predictor.from_pretrained(args.model, task=get_task(args.task).key)
    except (ModelFolderError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    items = expand(args.paths)
    seen = Counter()

    def counted(rows):
        for row in rows:
            seen["refused"] += row["known"] == 0
            seen["unfamiliar"] += row["familiar"] == 0
            yield row

    with tqdm(total=len(items), unit="image", file=sys.stderr) as bar:
        answered = batch_rows(predictor, items, args.batch_size, args.tile,
                              progress=lambda done, _: bar.update(done - bar.n))
        ok, failed = write_csv(args.out, predictor, counted(answered))
    print(f"{ok} of {len(items)} files classified with the {predictor.task.title.lower()} model, {failed} "
          f"could not be read; of those classified, {seen['refused']} refused as not {predictor.task.subject}, "
          f"{seen['unfamiliar']} answered with caution (unlike the training images); wrote {args.out}",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
