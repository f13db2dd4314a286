"""A real `python app.py` for the benchmarks and the tests: started on a free port, waited for,
stopped with SIGTERM as a Space stops it; its memory read from /proc."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, process: subprocess.Popen, log: Path | None = None, timeout: float = 180) -> None:
    """Until `url` answers; RuntimeError with the log's end when the app exits or is too slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"app.py exited: {log.read_text()[-3000:] if log else process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"app.py did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def running_app(temp: Path, log: Path | None = None, root: Path = ROOT,
                **env: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """`python app.py` of `root` (the bundled models) on a free port with GRADIO_TEMP_DIR=`temp`
    and `env` (SKINLESION_MODEL only when given there); yields (url, process)."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k != "SKINLESION_MODEL"}
    env = {**inherited, "GRADIO_SERVER_NAME": "127.0.0.1", "GRADIO_SERVER_PORT": str(port),
           "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(temp), "HF_HUB_OFFLINE": "1",
           **{k: v for k, v in env.items() if v or k != "SKINLESION_MODEL"}}
    out = log.open("w") if log else subprocess.DEVNULL
    process = subprocess.Popen([sys.executable, "app.py"], cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        wait_for(url, process, log)
        yield url, process
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        if log:
            out.close()


@contextlib.contextmanager
def running_apps(base: Path, n: int, **env: str) -> Iterator[list[tuple[str, subprocess.Popen]]]:
    """`n` replicas of running_app (as behind a proxy), started side by side, each with its own
    temp folder and log in `base` (replica<i>/, replica<i>.log); yields [(url, process), ...]."""
    from concurrent.futures import ThreadPoolExecutor

    base.mkdir(parents=True, exist_ok=True)
    managers = [running_app(base / f"replica{i}", base / f"replica{i}.log", **env) for i in range(n)]
    with contextlib.ExitStack() as stack:
        with ThreadPoolExecutor(n) as pool:
            started = [pool.submit(manager.__enter__) for manager in managers]
        for manager, future in zip(managers, started):
            if future.exception() is None:  # a start that failed has stopped its app already
                stack.push(manager.__exit__)
        yield [future.result() for future in started]  # the first failed start raises, the others stop


def memory_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS) or at its peak so far (VmHWM), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def call(url: str, api: str, data: list, headers: dict | None = None, timeout: float = 300) -> tuple[str, object]:
    """POST /gradio_api/call/<api>, then read its event stream: ("complete" | "error", data).
    `headers` go with both requests (behind a sticky proxy, X-Forwarded-For picks the replica,
    and only the replica that queued the event has its stream)."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api}", json.dumps({"data": data}).encode(),
                                     {"Content-Type": "application/json", **(headers or {})})
    event = json.load(urllib.request.urlopen(request, timeout=60))["event_id"]
    stream = urllib.request.Request(f"{url}gradio_api/call/{api}/{event}", headers=headers or {})
    with urllib.request.urlopen(stream, timeout=timeout) as response:
        text = response.read().decode()
    kind = re.findall(r"^event: (\w+)", text, re.M)[-1]
    return kind, json.loads(re.findall(r"^data: (.*)$", text, re.M)[-1])


def upload(url: str, name: str, data: bytes, headers: dict | None = None) -> str:
    """POST /gradio_api/upload as a browser sends it: one multipart file; its path on the server."""
    boundary = "skinlesion-upload-boundary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}gradio_api/upload", body,
                                     {"Content-Type": f"multipart/form-data; boundary={boundary}", **(headers or {})})
    return json.load(urllib.request.urlopen(request, timeout=120))[0]


def uploaded(path: str) -> dict:
    """An uploaded file as an endpoint's image value."""
    return {"path": path, "meta": {"_type": "gradio.FileData"}}
