"""Concurrency benchmark: python -m benchmarks.concurrency [--clients 16] [--requests 64]

Measures, in one run, what the served app delivers when --clients clients send /classify at the
same time, for three ways of serving it on this machine:

  1. one replica of `python app.py`, SKINLESION_CONCURRENCY=1 (the default: one model call at a
     time in each of the app's queues);
  2. one replica, SKINLESION_CONCURRENCY=2 (two model calls at a time in one process);
  3. two replicas, each with concurrency 1, behind nginx running deploy/nginx.conf (sticky by
     client address; tests/services.py's nginx_proxy) — only where nginx is installed (`make nginx`).

Each client is a gradio_client Client of its own, with an address of its own in X-Forwarded-For
(as distinct users behind a proxy: nginx's ip_hash spreads them over the replicas, and the app's
per-client share of its queue applies to each), on the bundled example image. Every request is
the whole round trip: the upload, the queued call and its event stream. The clients send
--requests requests in all, each its share one after another, after one warm-up request each.
Printed as a Markdown table: requests answered per second of wall time, the latency of one request
(p50, p95, in ms) and the requests that failed; then, for the replicas behind nginx, how many
requests each one handled (from its own /metrics). The clients run on the same machine as the
servers and take part of its CPU, so the figures are what one machine does as a whole.
"""
from __future__ import annotations

import argparse
import re
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tests.services import nginx_binary, nginx_proxy  # the tests' own: deploy/nginx.conf on a free port

from .served import ROOT, running_apps

IMAGE = ROOT / "assets" / "examples" / "ham10000" / "mel.jpg"
NGINX_CONFIG = ROOT / "deploy" / "nginx.conf"


def client_address(i: int) -> str:
    """A public address in a /24 of its own (nginx's ip_hash keys on the first three bytes)."""
    return f"203.0.{i % 256}.{10 + i // 256}"


def requests_total(url: str) -> float:
    """The app's own count of handled requests, from its /metrics."""
    text = urllib.request.urlopen(f"{url}metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r"^skinlesion_requests_total\{[^}]*\} (\S+)$", text, re.M))


def load(url: str, clients: int, requests: int) -> dict:
    """`clients` concurrent gradio_client clients of `url`, `requests` /classify calls in all:
    {"rate": answered requests/s, "p50"/"p95": seconds, "errors": count, "first_error": text}."""
    from gradio_client import Client, handle_file

    with ThreadPoolExecutor(clients) as pool:
        connected = list(pool.map(lambda i: Client(url, verbose=False,
                                                   headers={"X-Forwarded-For": client_address(i)}), range(clients)))
    image = handle_file(IMAGE)

    def send(client, n: int) -> list[tuple[bool, float, str]]:
        results = []
        for _ in range(n):
            started = time.perf_counter()
            try:
                client.predict(image, "ham10000", "auto", api_name="/classify")
                results.append((True, time.perf_counter() - started, ""))
            except Exception as error:  # counted, and the first one shown
                results.append((False, time.perf_counter() - started, f"{type(error).__name__}: {error}"))
        return results

    with ThreadPoolExecutor(clients) as pool:  # warm-up: one request per client, not timed
        list(pool.map(send, connected, [1] * clients))
    shares = [requests // clients + (i < requests % clients) for i in range(clients)]
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = [r for part in pool.map(send, connected, shares) for r in part]
        wall = time.perf_counter() - started
    for client in connected:
        client.close()
    latencies = [t for ok, t, _ in results if ok]
    errors = [e for ok, _, e in results if not ok]
    return {"rate": len(latencies) / wall, "errors": len(errors), "first_error": errors[0] if errors else "",
            "p50": np.percentile(latencies, 50) if latencies else float("nan"),
            "p95": np.percentile(latencies, 95) if latencies else float("nan")}


def one_replica(base: Path, concurrency: int, clients: int, requests: int) -> dict:
    with running_apps(base, 1, SKINLESION_CONCURRENCY=str(concurrency)) as [(url, _)]:
        return load(url, clients, requests)


def behind_nginx(base: Path, replicas: int, clients: int, requests: int) -> dict:
    with running_apps(base, replicas, SKINLESION_CONCURRENCY="1") as apps:
        urls = [url for url, _ in apps]
        before = [requests_total(url) for url in urls]
        upstreams = [url.removeprefix("http://").rstrip("/") for url in urls]
        with nginx_proxy(base / "nginx", upstreams, NGINX_CONFIG) as proxy:
            result = load(proxy.url, clients, requests)
        result["split"] = [int(requests_total(url) - b) for url, b in zip(urls, before)]
        return result


def main() -> None:
    flags = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flags.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    flags.add_argument("--requests", type=int, default=64, help="timed requests in all, per setting (default 64)")
    args = flags.parse_args()
    try:
        nginx = nginx_binary()
    except RuntimeError:
        nginx = None
    rows = []
    with tempfile.TemporaryDirectory(prefix="skinlesion-concurrency-") as temp:
        for concurrency in (1, 2):
            name = f"1 replica, SKINLESION_CONCURRENCY={concurrency}"
            print(f"… {name}", flush=True)
            rows.append((name, one_replica(Path(temp) / f"one{concurrency}", concurrency, args.clients, args.requests)))
        if nginx:
            name = "2 replicas (concurrency 1 each) behind nginx"
            print(f"… {name}", flush=True)
            rows.append((name, behind_nginx(Path(temp) / "nginx", 2, args.clients, args.requests)))
    print(f"\n{args.clients} concurrent clients, {args.requests} timed /classify requests per setting "
          f"(upload + queued call + event stream, gradio_client)\n")
    print("| setting | requests/s | p50 ms | p95 ms | errors |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['rate']:.2f} | {r['p50'] * 1000:.0f} | {r['p95'] * 1000:.0f} | {r['errors']} |")
    if not nginx:
        print("\n(nginx is not installed: `make nginx` adds the row of two replicas behind it)")
    for name, r in rows:
        if r.get("split"):
            print(f"\n{name}: requests handled by each replica (its /metrics, warm-up included): {r['split']}")
        if r["first_error"]:
            print(f"\n{name}: first error: {r['first_error'][:500]}")


if __name__ == "__main__":
    main()
