"""Prometheus metrics at `/metrics`, correct across gunicorn workers.

Under gunicorn, `on_starting` in gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at
`<instance>/prometheus` (emptied at every start) before any worker imports prometheus_client, so
each worker writes its samples to its own memory-mapped files there and `/metrics`, whichever worker
answers it, merges all of them; `child_exit` marks a dead worker's live gauges gone. Without that
variable (the Flask test client, `flask run`) the metrics are this process's own.

Counted in the workers: requests by endpoint, method and status; request latency; predictions by
class; answers by recognised true/false ("none of these"); images per forward pass; workers serving
each model version. Read from the shared state at scrape time: the active model version (the
store's pointer) and training jobs by state.
"""

import os
import time

from flask import Blueprint, Response, current_app, g, request
from prometheus_client import (REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest,
                               multiprocess)
from prometheus_client.core import GaugeMetricFamily

from webapp import jobs, versions

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text format generate_latest writes
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")

REQUESTS = Counter("webapp_http_requests_total", "HTTP requests answered, by endpoint, method and status",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("webapp_http_request_duration_seconds", "Time from request start to response, by endpoint",
                    ["endpoint"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
PREDICTIONS = Counter("webapp_predictions_total", "Photos classified, by predicted class", ["label"])
RECOGNISED = Counter("webapp_predictions_recognised_total", "Photos classified, by whether the model recognised "
                     "them as one of its classes (false: \"none of these\")", ["recognised"])
RECOGNISED.labels("true")  # both series exist from the first scrape, so a rate of refusals needs no absent()
RECOGNISED.labels("false")
BATCH_IMAGES = Histogram("webapp_batch_images", "Images per forward pass (micro-batching groups requests)",
                         buckets=(1, 2, 4, 8, 16, 32, 64))
SERVED = Gauge("webapp_model_served_workers", "Worker processes serving each model version (id in the "
               "model store, card version)", ["id", "version"], multiprocess_mode="livesum")

IN_FLIGHT = Gauge("webapp_http_requests_in_flight", "Requests a worker has started to receive and not yet "
                  "answered, queued ones included; one series per live worker, labelled pid",
                  multiprocess_mode="liveall")  # counted by the gunicorn worker (webapp/graceful.py)

bp = Blueprint("metrics", __name__)
_serving = None  # the (id, version) labels this process last set to 1 in SERVED


def model_served(version_id: str, predictor) -> None:
    """Called when this process starts serving a model version (first load and every hot swap)."""
    global _serving
    if _serving:
        SERVED.labels(*_serving).set(0)
    _serving = (version_id, str(predictor.version))
    SERVED.labels(*_serving).set(1)


def count_predictions(results) -> None:
    for result in results:
        PREDICTIONS.labels(result["label"]).inc()
        RECOGNISED.labels("true" if result.get("recognised", True) else "false").inc()


def _start_timer():
    g.metrics_started = time.perf_counter()


def _observe(response):
    started = g.pop("metrics_started", None)
    endpoint = request.endpoint or "unmatched"  # a rule name, never the raw path: bounded label values
    REQUESTS.labels(endpoint, request.method, str(response.status_code)).inc()
    if started is not None:
        LATENCY.labels(endpoint).observe(time.perf_counter() - started)
    return response


class SharedStateCollector:
    """Gauges read at scrape time from what all processes share: the store's active pointer and the
    jobs database (training jobs run in their own processes, not in a worker). A scrape only reads:
    it never reconciles jobs nor signals their processes."""

    def __init__(self, app):
        self.app = app

    def collect(self):
        model_store = versions.store(self.app)
        active_id = model_store.active_id()
        try:
            version = model_store.describe(active_id, active_id)["version"]
        except versions.VersionError:  # the pointer names a version that is gone
            version = "missing"
        states = jobs.count_by_status(self.app)
        active = GaugeMetricFamily("webapp_model_active", "The model version the store's pointer names "
                                   "(every worker swaps to it within a second)", labels=["id", "version"])
        active.add_metric([active_id, str(version)], 1)
        yield active
        counts = GaugeMetricFamily("webapp_training_jobs", "Training jobs by state", labels=["state"])
        for state in JOB_STATES:
            counts.add_metric([state], states.get(state, 0))
        yield counts


class _ThisProcess:
    """The default registry's samples, for a scrape outside multiprocess mode."""

    def collect(self):
        return REGISTRY.collect()


@bp.get("/metrics")
def scrape():
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(SharedStateCollector(current_app._get_current_object()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)


def init_app(app):
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.register_blueprint(bp)

