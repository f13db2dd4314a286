"""The real services the operations tests stand on (tests/services.py): a PostgreSQL server that can
die and come back, and Prometheus scraping the project's own scrape config (deploy/prometheus.yml)."""
from __future__ import annotations

import contextlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
import yaml
from services import postgres_server, prometheus_server, scrape_config

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "deploy" / "prometheus.yml"


def test_postgres_survives_a_stop_and_start(tmp_path):
    with postgres_server(tmp_path) as server:
        engine = sa.create_engine(server.url)
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE decisions (id serial PRIMARY KEY, label text)"))
            connection.execute(sa.text("INSERT INTO decisions (label) VALUES ('mel'), ('nv')"))
        with engine.connect() as connection:
            labels = connection.execute(sa.text("SELECT label FROM decisions ORDER BY id")).scalars().all()
        assert labels == ["mel", "nv"]

        server.stop()
        engine.dispose()
        with pytest.raises(sa.exc.OperationalError):
            engine.connect()

        server.start()
        with engine.begin() as connection:  # the same port and data: committed rows are still there
            connection.execute(sa.text("INSERT INTO decisions (label) VALUES ('bcc')"))
            assert connection.execute(sa.text("SELECT count(*) FROM decisions")).scalar() == 3
        engine.dispose()
    with pytest.raises(sa.exc.OperationalError):  # stopped on exit
        sa.create_engine(server.url).connect()


@contextlib.contextmanager
def metrics_endpoint(text: str) -> Iterator[str]:
    """A stand-in for the app's /metrics on 127.0.0.1: yields its address ("host:port")."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = text.encode()
            self.send_response(200 if self.path == "/metrics" else 404)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_prometheus_scrapes_the_project_config(tmp_path):
    with metrics_endpoint("up_test_metric 1\n") as target, \
            prometheus_server(tmp_path, [target], CONFIG) as prometheus:
        [scraped] = prometheus.wait_for_scrape(timeout=30)
        assert scraped["labels"]["job"] == "skinlesion" and scraped["scrapeUrl"] == f"http://{target}/metrics"
        [sample] = prometheus.query("up_test_metric")
        assert sample["metric"]["instance"] == target and float(sample["value"][1]) == 1


def test_the_deployed_config_scrapes_the_app_every_15_s_and_tests_every_second():
    deployed = yaml.safe_load(CONFIG.read_text())
    assert deployed["global"]["scrape_interval"] == "15s"
    [job] = deployed["scrape_configs"]
    assert job["job_name"] == "skinlesion" and job["metrics_path"] == "/metrics"
    assert job["static_configs"] == [{"targets": ["127.0.0.1:7860"]}]
    [tested] = scrape_config(CONFIG, ["127.0.0.1:1"])["scrape_configs"]
    assert tested["static_configs"] == [{"targets": ["127.0.0.1:1"]}] and tested["metrics_path"] == "/metrics"
