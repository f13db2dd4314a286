"""python -m skinlesion predict PATH... --out results.csv [--task TASK] [--model DIR] [--engine onnx] [--log-db URL]
                             [--patients CSV] [--ray [ADDRESS] [--workers N]]
python -m skinlesion monitor --db URL [--since 7d] [--task TASK] [--model DIR]
python -m skinlesion purge --db URL --days N

Classifies many images — files, folders, globs, zip archives — with the task's bundled model
(or --model), in batches, writing one CSV row per file as it goes (skinlesion/batch.py says
the layout). Long images are classified by tiles with --tile (skinlesion/tiles.py). An
unreadable file gets its error in the `error` column and the run goes on; the
exit code is 1 only when no file could be read. With --patients, each image named there is
answered with its patient's record (age, sex, body site; skinlesion/patient.py), for a model
that has a record model; the CSV's `patient_record` says which fields were used. With --log-db,
each file is also a row of the decision log (skinlesion/ops/log.py; never the record). With
--ray, the batches are spread over Ray actors on this machine or a cluster, for the same CSV
(skinlesion/ray_batch.py). A bad --patients CSV, like a bad model, exits with 2.

`monitor` reports the drift of the decision log's recent decisions against the model's
reference (skinlesion/ops/drift.py) and exits with 3 on an alarm (for cron or CI); `purge`
deletes the log's rows older than N days.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from tqdm import tqdm

from .batch import PATIENT_COLUMNS, BatchError, batch_rows, batch_size_for, expand, read_patients, write_csv
from .models.onnx import ENGINES
from .models.spec import ModelFolderError
from .ops import Operations, drift, log
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
    predict.add_argument("--batch-size", type=int,
                         help="images per pass (default: the engine's: PyTorch 8, ONNX Runtime 32)")
    predict.add_argument("--engine", choices=ENGINES, default="auto",
                         help="auto: ONNX Runtime when the model folder ships an export, else PyTorch (default)")
    predict.add_argument("--log-db", metavar="URL", help="also log one row per file to this database (SQLAlchemy URL)")
    predict.add_argument("--patients", type=Path, metavar="CSV",
                         help=f"the patients' records: a CSV with the columns {', '.join(PATIENT_COLUMNS)} (a blank "
                              "cell: not given), each file named as the output's file column names it; the images "
                              "named there are answered with their record, the others from the image alone")
    predict.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                         help="spread the batches over Ray actors: on a local Ray instance, or the cluster at ADDRESS "
                              "(HOST:6379); needs pip install -r requirements-ray.txt (skinlesion/ray_batch.py)")
    predict.add_argument("--workers", type=int, default=2, help="with --ray: how many actors (default: %(default)s)")
    monitor = commands.add_parser("monitor", help="the decision log's drift report; exit code 3 on an alarm")
    monitor.add_argument("--db", required=True, metavar="URL", help="the decision log's database (SQLAlchemy URL)")
    monitor.add_argument("--since", default="7d", help="the span to read: 30m, 24h, 7d … (default: %(default)s)")
    monitor.add_argument("--task", default=DEFAULT_TASK, choices=[*TASKS, *ALIASES])
    monitor.add_argument("--model", help="the model folder whose reference to compare with (default: the bundled)")
    purge = commands.add_parser("purge", help="delete the decision log's rows older than --days")
    purge.add_argument("--db", required=True, metavar="URL")
    purge.add_argument("--days", type=float, required=True)
    args = p.parse_args(argv)
    if args.command == "purge":
        print(f"deleted {log.purge(args.db, args.days)} rows older than {args.days:g} days", file=sys.stderr)
        return 0
    if getattr(args, "ray", None):
        from .ray_batch import ray_problem
        if problem := ray_problem(args.log_db, args.ray, args.patients):
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        predictor = Predictor.from_pretrained(args.model, task=get_task(args.task).key,
                                              engine=getattr(args, "engine", "auto"))
    except (ModelFolderError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.command == "monitor":
        return monitor_report(predictor, args.db, args.since)
    return predict_files(predictor, args)


def monitor_report(predictor: Predictor, url: str, since: str) -> int:
    """Print the drift report of the log's decisions of the last `since`; 3 on an alarm."""
    try:
        start = datetime.now(timezone.utc) - drift.parse_since(since)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report = drift.report(log.read(url, start, predictor.task.key), drift.Reference.load(predictor.folder))
    print(report.text())
    return 3 if report.alarm else 0


def predict_files(predictor: Predictor, args) -> int:
    """`predict`: the files' rows into the CSV (with the records of --patients), each reported to
    the log when one is given; 2 for a bad --patients CSV."""
    try:
        patients = read_patients(args.patients, predictor) if args.patients else None
    except BatchError as error:
        print(f"error: --patients: {error}", file=sys.stderr)
        return 2
    ops = Operations({predictor.task.key: predictor}, args.log_db) if args.log_db else None
    items = expand(args.paths)
    seen = Counter()
    if patients and (unmatched := len(set(patients) - {i.name for i in items})):
        print(f"warning: {unmatched} of the {len(patients)} records of --patients name no file given here "
              "(a file is named as the output's file column names it)", file=sys.stderr)

    def counted(rows):
        for row in rows:
            seen["refused"] += row["known"] == 0
            seen["unfamiliar"] += row["familiar"] == 0
            seen["record"] += bool(row["patient_record"])
            yield row

    with tqdm(total=len(items), unit="image", file=sys.stderr) as bar:
        if args.ray:  # the same rows from Ray actors (skinlesion/ray_batch.py)
            from .ray_batch import ray_rows
            answered = ray_rows(args.model, predictor.task.key, args.paths, None if args.ray == "local" else args.ray,
                                args.batch_size or batch_size_for(predictor), args.tile, args.workers,
                                progress=lambda done, _: bar.update(done - bar.n), engine=getattr(args, "engine", None))
        else:
            answered = batch_rows(predictor, items, args.batch_size, args.tile,
                                  progress=lambda done, _: bar.update(done - bar.n),
                                  observe=ops.reporter(predictor, "cli") if ops else None, patients=patients)
        ok, failed = write_csv(args.out, predictor, counted(answered))
    if ops:
        ops.close()
    print(f"{ok} of {len(items)} files classified with the {predictor.task.title.lower()} model, {failed} "
          f"could not be read; of those classified, {seen['refused']} refused as not {predictor.task.subject}, "
          f"{seen['unfamiliar']} answered with caution (unlike the training images)"
          + (f", {seen['record']} with the patient's record" if patients is not None else "") + f"; wrote {args.out}",
          file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
