"""`python -m train` under torchrun, with a record of what each rank did: the training images
it fetched in each epoch, its optimiser steps and a checksum of its parameters at the end. The
record goes to $DDP_PROBE/rank<R>.json; tests/test_distributed.py reads it.

    torchrun --nproc_per_node 2 tests/ddp_probe.py --data DIR --out DIR ...
"""
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train.__main__ as program  # noqa: E402
from skinlesion.data import ImageDataset  # noqa: E402
from train.loop import Trainer  # noqa: E402

record = {"fetched": {}, "steps": 0, "checksum": None}
epoch_now = [0]

fetch, one_epoch, fit = ImageDataset.__getitem__, Trainer.train_one_epoch, program.fit


def recording_fetch(self, i):
    if self.is_training:
        record["fetched"].setdefault(str(epoch_now[0]), []).append(int(i))
    return fetch(self, i)


def recording_epoch(self, loader, epoch, *args):
    epoch_now[0] = epoch
    loader.dataset.is_training = True
    return one_epoch(self, loader, epoch, *args)


def recording_fit(trainer, *args):
    history = fit(trainer, *args)
    record["steps"] = trainer.step
    # parameters only: batch-norm statistics are each rank's own between DDP's buffer broadcasts
    record["checksum"] = float(sum(p.detach().double().sum() for p in trainer.model.parameters()))
    return history


ImageDataset.is_training = False
ImageDataset.__getitem__ = recording_fetch
Trainer.train_one_epoch = recording_epoch
program.fit = recording_fit
code = program.main()
Path(os.environ["DDP_PROBE"], f"rank{os.environ['RANK']}.json").write_text(json.dumps(record))
sys.exit(code)
