"""`python -m skinlesion predict ... --ray [ADDRESS]`: the batch path (batch.py) spread over Ray
actors, on this machine or a Ray cluster, with the same rows in the same order.

The driver expands the inputs (`batch.expand`: the same items, order and errors as without
Ray) and makes a Ray Dataset of their descriptions — index, name, absolute path, zip member,
size, error; never the image bytes: each worker reads its files itself, so on a cluster every
node must see the images, the model folder and the project at the same paths (a shared file
system). `map_batches` hands each batch of `batch_size` items to one of `workers` actors, each
holding one CPU and one Predictor loaded once in its `__init__`; its `__call__` is
`batch.batch_rows` over the batch, returning the CSV rows (as JSON text, so numbers stay numbers
and empty cells stay empty) with their indices. The driver yields the rows in input order as
soon as the rows before them are in, so `batch.write_csv` writes the same CSV as one process.

Not done: object stores. Items are local or shared-file-system paths; images in S3, GCS or on
the Hub would go through Ray's own readers (`ray.data.read_images`/`read_binary_files` with
`filesystem=`) and `Predictor.prepare(bytes)`, a different item. Ray is optional:
requirements-ray.txt.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Iterator

from .batch import BATCH_SIZE, Item, batch_rows, expand

INSTALL = "pip install -r requirements-ray.txt"
ROOT = Path(__file__).resolve().parents[1]  # the project: on every node's PYTHONPATH at this path


class RayMissing(ImportError):
    """--ray without Ray installed."""


def ray_problem(log_db: str | None = None, address: str | None = None, patients: object = None) -> str:
    """Why --ray cannot run (empty when it can): Ray missing, a decision log or patients' records
    asked for, or an input taken for the address (`--ray photos/ ...`: argparse gives --ray the
    next word)."""
    if address and Path(address).exists():
        return f"--ray took {address!r} for a Ray address: put --ray after the images, or write --ray=ADDRESS"
    if log_db:
        return "--log-db is not supported with --ray (the decision log is written by one process)"
    if patients:
        return "--patients is not supported with --ray (its actors answer from the images alone)"
    try:
        require_ray()
    except RayMissing as error:
        return str(error)
    return ""


def require_ray():
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline machines: nothing phones home
    try:
        import ray
        import ray.data  # noqa: F401 (the [data] extra: pyarrow, pandas)
    except ImportError as error:
        raise RayMissing(f"--ray needs Ray Data ({error}): {INSTALL}") from None
    return ray


def _described(index: int, item: Item) -> dict:
    """An item as a Dataset row: plain strings and numbers, the path absolute (workers' cwd differs)."""
    return {"index": index, "name": item.name, "path": os.path.abspath(item.path) if item.path else "",
            "member": item.member or "", "size": item.size, "error": item.error}


class Analyser:
    """One Ray actor: the Predictor, loaded once; each call answers one batch of described items."""

    def __init__(self, model: str | None, task: str, batch_size: int, tile: bool | None, engine: str | None = None):
        from .predictor import Predictor
        self.predictor = Predictor.from_pretrained(model, task=task, **({"engine": engine} if engine else {}))
        self.batch_size, self.tile = batch_size, tile

    def __call__(self, batch: dict) -> dict:
        items = [Item(str(name), Path(path) if path else None, str(member) or None, int(size), str(error))
                 for name, path, member, size, error in zip(batch["name"], batch["path"], batch["member"],
                                                              batch["size"], batch["error"])]
        rows = batch_rows(self.predictor, items, self.batch_size, self.tile)
        return {"index": batch["index"], "row": [json.dumps(r) for r in rows]}


def ray_rows(model: str | None, task: str, paths: list[str], address: str | None = None,
             batch_size: int = BATCH_SIZE, tile: bool | None = None, workers: int | None = None,
             progress: Callable[[int, int], None] | None = None, engine: str | None = None) -> Iterator[dict]:
    """One `batch.row` per input file, in input order, analysed by `workers` Ray actors (None: one
    per CPU of the cluster). `address`: None starts a local Ray instance and shuts it down
    after; "HOST:6379" (or "auto") joins a running cluster. `model`: a folder (made absolute:
    it must exist at that path on every node), a Hub repo id, or None for the task's bundled
    model; `engine`: the Predictor's (None: its default). `progress(done, total)` as rows arrive.
    RayMissing when Ray is not installed."""
    ray = require_ray()
    items = expand(paths)
    if not items:
        return
    if model is not None and Path(model).exists():
        model = os.path.abspath(model)
    started = not ray.is_initialized()
    if started:
        # the workers import skinlesion from the project at the driver's path
        runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}}
        if address is None:  # "local": a new instance, even where `ray start` or RAY_ADDRESS names a cluster
            ray.init(address="local", num_cpus=max(os.cpu_count() or 1, workers or 1), include_dashboard=False,
                     log_to_driver=False, runtime_env=runtime_env)
        else:
            ray.init(address=address, log_to_driver=False, runtime_env=runtime_env)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the command's own bar counts images
        context.print_on_execution_start = False
        workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        # one block per batch, so the batches spread over the actors instead of riding one block
        dataset = ray.data.from_items([_described(i, item) for i, item in enumerate(items)],
                                      override_num_blocks=-(-len(items) // batch_size))
        answered = dataset.map_batches(Analyser, fn_constructor_args=(model, task, batch_size, tile, engine),
                                       batch_size=batch_size, batch_format="numpy", num_cpus=1,
                                       compute=ray.data.ActorPoolStrategy(size=workers))
        waiting: dict[int, dict] = {}
        done = 0
        for batch in answered.iter_batches(batch_size=None, batch_format="numpy"):
            for index, text in zip(batch["index"], batch["row"]):
                waiting[int(index)] = json.loads(text)
            while done in waiting:
                yield waiting.pop(done)
                done += 1
            if progress:
                progress(done, len(items))
        if done != len(items):
            raise RuntimeError(f"Ray returned {done + len(waiting)} of {len(items)} rows")
    finally:
        if started:
            ray.shutdown()
