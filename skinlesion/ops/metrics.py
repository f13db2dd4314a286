"""What the running app exposes to Prometheus (/metrics, in its text format, by
prometheus_client) and to a load balancer (/healthz): counts, latencies and score
distributions of the decisions (record.py), never anything that identifies a person or an image.

    skinlesion_requests_total{endpoint, status}        requests: ok, bad_input, error
    skinlesion_request_seconds{endpoint}               a request's time in its handler (histogram)
    skinlesion_images_total{task, endpoint, outcome}   analysed images: answered, unfamiliar, refused,
                                                       bad_input, error (a batch counts each file)
    skinlesion_verdicts_total{task, level}             the verdicts' levels (refer, uncertain, clear, …)
    skinlesion_record_answers_total{task, endpoint}    answers that used the patient's record (age, sex,
                                                       site; their own rule): never the record itself
    skinlesion_prediction_set_size{task}               classes in the 90% set (histogram)
    skinlesion_check_margin{task, check}               score − threshold of the modality and the
                                                       familiarity check (histogram; > 0 fails)
    skinlesion_model_info{task, architecture, sha256}  1 for each model served
    skinlesion_log_rows_total{status}                  decision-log rows: written, failed (retried), dropped
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_asgi_app
from starlette.responses import JSONResponse

from .record import Decision

LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
MARGIN_BUCKETS = (-8, -4, -2, -1, -0.5, 0, 0.5, 1, 2, 4, 8)
SET_BUCKETS = (1, 2, 3, 4, 5, 6, 7)
METRICS_PATH, HEALTH_PATH = "/metrics", "/healthz"


class Metrics:
    """The app's metrics in a registry of their own (one per process; tests make several)."""

    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter("skinlesion_requests", "Requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.seconds = Histogram("skinlesion_request_seconds", "Time of a request in its handler", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("skinlesion_images", "Analysed images by outcome", ["task", "endpoint", "outcome"],
                              registry=r)
        self.verdicts = Counter("skinlesion_verdicts", "Verdict levels", ["task", "level"], registry=r)
        self.record = Counter("skinlesion_record_answers", "Answers that used the patient's record",
                              ["task", "endpoint"], registry=r)
        self.set_size = Histogram("skinlesion_prediction_set_size", "Classes in the 90% prediction set", ["task"],
                                  buckets=SET_BUCKETS, registry=r)
        self.margin = Histogram("skinlesion_check_margin", "Input-check score minus its threshold (> 0 fails)",
                                ["task", "check"], buckets=MARGIN_BUCKETS, registry=r)
        self.model = Gauge("skinlesion_model_info", "The models served", ["task", "architecture", "sha256"],
                           registry=r)
        self.log_rows = Counter("skinlesion_log_rows", "Decision-log rows by what became of them", ["status"],
                                registry=r)

    def served(self, task: str, architecture: str, sha256: str) -> None:
        self.model.labels(task, architecture, sha256).set(1)

    def request(self, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(endpoint, status).inc()
        self.seconds.labels(endpoint).observe(seconds)

    def image(self, d: Decision) -> None:
        self.images.labels(d.task, d.endpoint, d.outcome).inc()
        if d.level:
            self.verdicts.labels(d.task, d.level).inc()
        if d.record:
            self.record.labels(d.task, d.endpoint).inc()
        if d.probabilities and d.decided:
            self.set_size.labels(d.task).observe(len(d.prediction_set))
        for check, score, threshold in (("modality", d.check_score, d.check_threshold),
                                        ("familiarity", d.familiarity_score, d.familiarity_threshold)):
            if score is not None and threshold is not None:
                self.margin.labels(d.task, check).observe(score - threshold)


class Endpoints:
    """ASGI middleware: GET /metrics (the registry, by prometheus_client's own ASGI app) and
    GET /healthz (200 with the models served, as JSON), before the page's routes."""

    def __init__(self, app, metrics: Metrics, models: dict[str, str]):
        self.app, self.models = app, models
        self.exposition = make_asgi_app(metrics.registry)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/") if scope["type"] == "http" else None
        if path == METRICS_PATH:
            return await self.exposition(scope, receive, send)
        if path == HEALTH_PATH:
            return await JSONResponse({"status": "ok", "models": self.models})(scope, receive, send)
        return await self.app(scope, receive, send)
