"""Prometheus metrics at `/metrics`, correct across gunicorn workers.

Under gunicorn, `on_starting` in gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at
`<instance>/prometheus` (emptied at every start) before any worker imports prometheus_client, so
each worker writes its samples to its own memory-mapped files there and `/metrics`, whichever worker
answers it, merges all of them; `child_exit` marks a dead worker's live gauges gone. Without that
variable (the Flask test client, `flask run`) the metrics are this process's own.

Counted in the workers: requests by endpoint, method and status; request latency; predictions by
class; answers by recognised true/false ("none of these"); images per forward pass; workers serving
each model version. What is read from the shared state at scrape time (the active model version,
training jobs by state) and the `/metrics` endpoint are webapp.core.scrape's: counting here never
imports the jobs or the model store.
"""

import time

from flask import g, request
from prometheus_client import Counter, Gauge, Histogram

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
                  multiprocess_mode="liveall")  # counted by the gunicorn worker (webapp/core/graceful.py)

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


def init_app(app):
    app.before_request(_start_timer)
    app.after_request(_observe)

