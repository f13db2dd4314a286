"""Soak benchmark: python -m benchmarks.soak [--answers 1000 10000] [--minutes 5] [--clients 16] [--keep 120]

One real `python app.py` (benchmarks/served.py, the bundled models), pressed through raw HTTP
as a crowd and one hostile client would; prints Markdown tables:

1. **memory over many answers**: the server's RSS after each count of /classify answers (4
   clients at once, a small JPEG each as a data URL). Goal: the last within 100 MB of the first.
2. **a crowd**: --clients clients (each its own address, as a proxy forwards it) for
   --minutes minutes, each uploading a fresh image (/gradio_api/upload, as the page does) and
   asking /analyse about it, again and again; every 15 s the server's temporary folder (files,
   MB, the oldest file's age, the page's own files left out) and RSS. Goal: nothing older than
   the keep time + 60 s.
3. **one huge image**: a 40-megapixel JPEG of noise (under 20 MB): /analyse and /compare of
   it, a small /classify sent while /compare runs (its wait), four page analyses of it in
   sessions with no page open (their state: RSS just after, and after the grace time); then the
   server's peak RSS over the whole run. Goals: 3 s, 8 s, 2.5 GB.

Figures move with the machine's load: run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from .served import call, memory_mb, running_app, upload, uploaded

SAMPLE_EVERY = 15  # seconds between two looks at the temporary folder in the crowd run


def jpeg(seed: int, size: tuple[int, int] = (200, 150)) -> bytes:
    """A small skin-coloured JPEG, different for each seed."""
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal((170, 120, 100), 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def data_url(data: bytes) -> dict:
    return {"url": "data:image/jpeg;base64," + base64.b64encode(data).decode()}


def client_address(i: int) -> dict:
    """Client i's own address (TEST-NET-3), as the proxy in front of the app forwards it."""
    return {"X-Forwarded-For": f"203.0.113.{i + 1}"}


def folder_now(temp: Path, own: set[Path]) -> tuple[int, float, float]:
    """(files, MB, the oldest file's age in s) under `temp`, the page's own files left out."""
    now, count, size, oldest = time.time(), 0, 0, 0.0
    for path in temp.rglob("*"):
        try:
            if path in own or not path.is_file():
                continue
            status = path.stat()
        except OSError:  # deleted meanwhile
            continue
        count, size = count + 1, size + status.st_size
        oldest = max(oldest, now - status.st_mtime)
    return count, size / 1024 ** 2, oldest


def answers(url: str, pid: int, counts: list[int]) -> list[tuple[int, float]]:
    """RSS (MB) after each count of /classify answers, after 100 to warm up."""
    small = data_url(jpeg(0))

    def one(i: int) -> str:
        return call(url, "classify", [small, "ham10000", "auto"], client_address(i % 4))[0]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, range(100)))
        rows, done = [], 0
        for count in sorted(counts):
            kinds = list(pool.map(one, range(done, count)))
            done = count
            rows.append((count, memory_mb(pid), kinds.count("complete")))
            print(f"  {count} answers: RSS {rows[-1][1]:.0f} MB", flush=True)
    return rows


def crowd(url: str, pid: int, temp: Path, own: set[Path], clients: int, minutes: float) -> tuple[list, dict]:
    """The crowd run: samples (s, answers, errors, files, MB, oldest s, RSS MB) and totals."""
    until, done, errors = time.monotonic() + minutes * 60, [0], [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        n = 0
        while time.monotonic() < until:
            n += 1
            try:
                path = upload(url, f"c{i}-{n}.jpg", jpeg(i * 100_000 + n), client_address(i))
                kind, _ = call(url, "analyse", [uploaded(path), "top", 0.45, "ham10000", "auto", "Grad-CAM"],
                               client_address(i))
                ok = kind == "complete"
            except OSError:
                ok = False
            with lock:
                done[0] += ok
                errors[0] += not ok

    samples, started = [], time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        time.sleep(SAMPLE_EVERY)
        files, size, oldest = folder_now(temp, own)
        samples.append((time.monotonic() - started, done[0], errors[0], files, size, oldest, memory_mb(pid)))
        print(f"  {samples[-1][0]:.0f} s: {done[0]} answers, {files} files, {size:.1f} MB, "
              f"oldest {oldest:.0f} s", flush=True)
    return samples, {"answers": done[0], "errors": errors[0]}


def huge_jpeg() -> bytes:
    """A 40-megapixel JPEG of noise, under 20 MB (the upload limit is 25 MB)."""
    noise = np.random.default_rng(0).integers(0, 255, (5000, 8000, 3), dtype=np.uint8)
    for quality in (40, 30, 20, 10):
        buffer = io.BytesIO()
        Image.fromarray(noise).save(buffer, "JPEG", quality=quality)
        if buffer.tell() < 20 * 1024 ** 2:
            return buffer.getvalue()
    raise RuntimeError("no quality gives a 40-megapixel JPEG of noise under 20 MB")


def page_analyse(url: str, image: dict, session: str, index: int) -> str:
    """The page's Analyse in `session` (no page open: no heartbeat), as the page sends it."""
    body = {"data": [image, "top", 0.45, "ham10000", "auto", "Grad-CAM"], "fn_index": index,
            "session_hash": session, "trigger_id": None}
    request = urllib.request.Request(f"{url}gradio_api/queue/join", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=60).read()
    with urllib.request.urlopen(f"{url}gradio_api/queue/data?session_hash={session}", timeout=300) as stream:
        for line in stream:
            if line.startswith(b"data: ") and json.loads(line[6:]).get("msg") == "process_completed":
                return "complete"
    return "no answer"


def huge(url: str, pid: int, grace: float) -> list[tuple[str, str, str]]:
    """The huge-image probe: rows of (what, figure, goal)."""
    data = huge_jpeg()
    image = uploaded(upload(url, "huge.jpg", data))
    rows = [("the image", f"8000 × 5000 px, {len(data) / 1024 ** 2:.1f} MB JPEG", "")]
    t = time.perf_counter()
    kind, _ = call(url, "analyse", [image, "top", 0.45, "ham10000", "auto", "Grad-CAM"])
    rows.append(("/analyse", f"{time.perf_counter() - t:.2f} s ({kind})", "≤ 3 s"))
    with ThreadPoolExecutor(2) as pool:
        t = time.perf_counter()
        compared = pool.submit(call, url, "compare", [image, "top", 0.45, "ham10000"], client_address(0))
        time.sleep(0.5)
        small = time.perf_counter()
        call(url, "classify", [data_url(jpeg(1)), "ham10000", "auto"], client_address(1))
        waited = time.perf_counter() - small
        kind = compared.result()[0]
        rows.append(("/compare", f"{time.perf_counter() - t:.2f} s ({kind})", "≤ 8 s"))
    rows.append(("a small /classify sent while /compare runs", f"{waited:.2f} s", "not behind /compare"))
    config = json.load(urllib.request.urlopen(f"{url}config", timeout=30))
    index = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "page_analyse")
    before = memory_mb(pid)
    for i in range(4):
        page_analyse(url, image, f"soak-page-{i}", index)
    after = memory_mb(pid)
    time.sleep(grace + 5)
    later = memory_mb(pid)
    rows.append(("RSS before / after 4 page analyses / after the grace time",
                 f"{before:.0f} / {after:.0f} / {later:.0f} MB", "state ≤ 20 MB a session, then freed"))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--answers", type=int, nargs="+", default=[1000, 10000], help="RSS after these many answers")
    p.add_argument("--minutes", type=float, default=5, help="the crowd run's length")
    p.add_argument("--clients", type=int, default=16, help="the crowd's size")
    p.add_argument("--keep", type=int, default=120, help="SKINLESION_KEEP_SECONDS of the server")
    args = p.parse_args(argv)
    from skinlesion.app.server import SESSION_GRACE_SECONDS
    grace = min(SESSION_GRACE_SECONDS, args.keep)
    with tempfile.TemporaryDirectory() as base:
        base = Path(base)
        with running_app(base / "tmp", base / "server.log", SKINLESION_KEEP_SECONDS=str(args.keep)) as (url, process):
            temp = next((base / "tmp").glob("skinlesion-*"))
            own = set(temp.rglob("*"))
            started = memory_mb(process.pid)
            print("memory over many answers …", flush=True)
            memory = answers(url, process.pid, args.answers)
            print("a crowd …", flush=True)
            samples, totals = crowd(url, process.pid, temp, own, args.clients, args.minutes)
            print("one huge image …", flush=True)
            probe = huge(url, process.pid, grace)
            peak = memory_mb(process.pid, "VmHWM")
            log_lines = (base / "server.log").read_text(errors="replace").splitlines()
    print(f"\n{os.cpu_count()} CPU cores; keep time {args.keep} s; the server's RSS after start-up {started:.0f} MB\n")
    print("| answers (/classify) | RSS MB | change |\n|---|---|---|")
    for count, rss, _ in memory:
        print(f"| {count:,} | {rss:.0f} | {rss - memory[0][1]:+.0f} |")
    print(f"\n{args.clients} clients for {args.minutes:g} min (upload + /analyse): {totals['answers']:,} answers, "
          f"{totals['errors']} errors\n")
    print("| s | answers | files in the temp folder | MB | oldest file s | RSS MB |\n|---|---|---|---|---|---|")
    for seconds, done, _, files, size, oldest, rss in samples:
        print(f"| {seconds:.0f} | {done:,} | {files} | {size:.1f} | {oldest:.0f} | {rss:.0f} |")
    worst = max((s[5] for s in samples), default=0)
    print(f"\noldest file at any look: {worst:.0f} s (goal ≤ {args.keep + 60} s)\n")
    print("| probe | figure | goal |\n|---|---|---|")
    for what, figure, goal in probe:
        print(f"| {what} | {figure} | {goal} |")
    print(f"| the server's peak RSS over the whole run | {peak:.0f} MB | ≤ 2,560 MB |")
    print(f"| the server log's longest line | {max(map(len, log_lines), default=0)} characters | ≤ 1,024 |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
