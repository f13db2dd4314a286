"""Two replicas of the real app behind nginx running the project's own deploy/nginx.conf
(tests/services.py's nginx_proxy): gradio_client works through the proxy (an upload, a queued
call and its event stream); each client's requests reach one replica while clients spread over
both (told by the proxy's access log, which names the replica of every request, and by each
replica's own /metrics); the proxy does not answer /metrics."""
from __future__ import annotations

import io
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from services import nginx_proxy

from benchmarks.served import call, running_apps, upload, uploaded

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "nginx.conf"
IMAGE = ROOT / "assets" / "examples" / "ham10000" / "mel.jpg"
HAM_CODES = {"akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"}


def client_address(i: int) -> str:
    """A public address (no proxy's) in a /24 network of its own: nginx's ip_hash keys on the first
    three bytes of an IPv4 address, so addresses in one /24 would all reach one replica."""
    return f"203.0.{i}.10"


def host_port(url: str) -> str:
    return url.removeprefix("http://").rstrip("/")


def requests_total(replica: str) -> float:
    """The replica's own count of handled requests (every endpoint and status), from its /metrics."""
    text = urllib.request.urlopen(f"{replica}metrics", timeout=10).read().decode()
    return sum(float(v) for v in re.findall(r"^skinlesion_requests_total\{[^}]*\} (\S+)$", text, re.M))


def status(url: str) -> int:
    try:
        return urllib.request.urlopen(url, timeout=10).status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(the replicas' URLs, the proxy): two `python app.py`, started side by side, behind nginx."""
    base = tmp_path_factory.mktemp("proxy")
    with running_apps(base, 2) as apps:
        replicas = [url for url, _ in apps]
        with nginx_proxy(base / "nginx", [host_port(u) for u in replicas], CONFIG) as proxy:
            yield replicas, proxy


def test_gradio_client_works_through_the_proxy(served):
    from gradio_client import Client, handle_file

    replicas, proxy = served

    def classify(i: int) -> tuple[str, dict]:
        client = Client(proxy.url, verbose=False, headers={"X-Forwarded-For": client_address(100 + i)})
        return client.config["root"], client.predict(handle_file(IMAGE), "ham10000", "auto", api_name="/classify")

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(classify, range(4)))
    # Gradio's config names the address the client used (Host, port included): its URLs lead back to the proxy.
    assert {root.rstrip("/") for root, _ in answers} == {proxy.url.rstrip("/")}
    assert all(answer["label"] in HAM_CODES and answer["confidences"] for _, answer in answers)

    seen = {client_address(100 + i): set() for i in range(4)}  # client → the replicas that served its requests
    for request in proxy.requests():
        if request["client"] in seen:
            seen[request["client"]].add(request["upstream"])
    assert all(len(upstreams) == 1 for upstreams in seen.values()), seen
    assert set.union(*seen.values()) == {host_port(u) for u in replicas}  # both replicas served a client
    paths = {r["path"].split("?")[0] for r in proxy.requests() if r["client"] == client_address(100)}
    assert {"/gradio_api/upload", "/gradio_api/queue/join", "/gradio_api/queue/data"} <= paths, paths


def test_one_clients_upload_and_call_reach_one_replica_and_clients_spread(served, tmp_path):
    replicas, proxy = served
    small = IMAGE.read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    large = io.BytesIO()
    Image.fromarray(noise).save(large, "JPEG", quality=95)  # ~2 MB: nginx holds it on disk (its workers' temp folder)
    assert large.tell() > 1024 ** 2
    before = {replica: requests_total(replica) for replica in replicas}
    addresses = [client_address(i) for i in range(6)]
    for i, address in enumerate(addresses):
        headers = {"X-Forwarded-For": address}
        path = upload(proxy.url, f"lesion{i}.jpg", large.getvalue() if i == 0 else small, headers)
        # Replicas keep uploads in folders of their own: a call on the other replica could not read the file.
        kind, answer = call(proxy.url, "classify", [uploaded(path), "ham10000", "auto"], headers)
        assert kind == "complete", answer

    served_by = {address: set() for address in addresses}
    for request in proxy.requests():
        if request["client"] in served_by:
            served_by[request["client"]].add(request["upstream"])
    assert all(len(upstreams) == 1 for upstreams in served_by.values()), served_by
    replica_of = {address: upstreams.pop() for address, upstreams in served_by.items()}
    assert set(replica_of.values()) == {host_port(u) for u in replicas}, replica_of  # spread over both
    for replica in replicas:  # each replica handled the calls of exactly the clients sent to it
        calls = sum(upstream == host_port(replica) for upstream in replica_of.values())
        assert requests_total(replica) - before[replica] == calls


def test_the_proxy_does_not_answer_metrics_but_each_replica_does(served):
    replicas, proxy = served
    for path in ("metrics", "metrics/", "%6detrics", "gradio_api/../metrics"):
        assert status(proxy.url + path) == 404, path
    assert status(f"{proxy.url}healthz") == 200  # the rest passes through
    for replica in replicas:
        assert status(f"{replica}metrics") == 200
        assert requests_total(replica) >= 0
