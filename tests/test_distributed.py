"""torchrun data-parallel training: a real 2-process gloo job on the CPU (train/distributed.py)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_ham_folder, run_train

from skinlesion import Predictor

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
SMALL = ["--image-size", "32", "--batch-size", "16", "--workers", "0"]
pytestmark = pytest.mark.slow  # real torchrun jobs


def torchrun(*args, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **kwargs.pop("env", {})}
    return subprocess.run([*TORCHRUN, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600, **kwargs)


def kill_every_process_of(run_folder):
    """SIGKILL each process whose command line names `run_folder`."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(run_folder).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            pass  # gone meanwhile


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    return make_ham_folder(tmp_path_factory.mktemp("ddp") / "ham", per_class=20)


def test_two_processes_train_disjoint_shards_into_one_model_folder(ham, tmp_path):
    out, probe = tmp_path / "run", tmp_path / "probe"
    probe.mkdir()
    result = torchrun("tests/ddp_probe.py", "--data", ham, "--out", out, "--epochs", "2", *SMALL,
                      "--no-explanations", env={"DDP_PROBE": str(probe)})
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]

    n_train = sum(1 for line in (out / "split.csv").read_text().splitlines() if line.endswith(",train"))
    steps = n_train // 2 // 16  # per rank and epoch: half the images, full batches of 16
    for epoch in ("1", "2"):
        shards = [set(r["fetched"][epoch]) for r in ranks]
        assert all(len(s) == steps * 16 for s in shards)  # both ranks trained
        assert not shards[0] & shards[1]  # on disjoint shards
    assert ranks[0]["fetched"]["1"] != ranks[0]["fetched"]["2"]  # reshuffled each epoch
    assert ranks[0]["steps"] == ranks[1]["steps"] == 2 * steps
    # gradients were averaged: after different shards, both ranks hold the same weights
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=1e-9)

    assert [p.relative_to(out).as_posix() for p in out.rglob("model.safetensors")] == ["model/model.safetensors"]
    assert sorted(p.name for p in out.glob("*.pt")) == ["checkpoint.pt"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert json.loads((out / "model/config.json").read_text())["training"]["world_size"] == 2
    # the loss and speed are over both ranks: every image of the epoch counted once
    assert all(h["images_per_s"] > 0 and np.isfinite(h["train_loss"]) for h in metrics["history"])

    predictor = Predictor.from_pretrained(out / "model")
    image = np.full((30, 40, 3), (70, 175, 160), np.uint8)
    probs = predictor.predict(image)
    assert set(probs) == set(predictor.codes) and sum(probs.values()) == pytest.approx(1)


def test_a_distributed_run_resumes_after_a_crash(ham, tmp_path):
    out = tmp_path / "run"
    args = ["--data", ham, "--out", out, "--epochs", "4", "--image-size", "48", "--batch-size", "16",
            "--workers", "0", "--no-explanations"]
    process = subprocess.Popen([*TORCHRUN, "-m", "train", *map(str, args)], cwd=ROOT,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "checkpoint.pt").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    kill_every_process_of(out)  # torchrun and both workers (their own session), as a lost machine would
    process.wait()
    assert (out / "checkpoint.pt").exists() and not (out / "metrics.json").exists()

    single = run_train(*args, "--resume")  # a 2-process checkpoint does not continue in 1 process
    assert single.returncode == 2 and "made with different settings" in single.stderr

    resumed = torchrun("-m", "train", *args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done = int(resumed.stderr.split("after epoch ")[1].split()[0])
    assert 1 <= done < 4 and f"epoch {done + 1}/4" in resumed.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3, 4] and metrics["world_size"] == 2
