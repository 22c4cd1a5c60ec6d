"""`/metrics`: the samples the workers counted (webapp.core.metrics), merged across gunicorn workers
in multiprocess mode, and gauges read at scrape time from what all processes share: the store's
active pointer and training jobs by state."""

import os

from flask import Blueprint, Response
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from webapp.core.site import current_site
from webapp.lifecycle import jobs, versions

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # the text format generate_latest writes
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")

bp = Blueprint("metrics", __name__)


class SharedStateCollector:
    """Gauges read at scrape time from what all processes share: the store's active pointer and the
    jobs database (training jobs run in their own processes, not in a worker). A scrape only reads:
    it never reconciles jobs nor signals their processes."""

    def __init__(self, site):
        self.site = site

    def collect(self):
        model_store = versions.store(self.site)
        active_id = model_store.active_id()
        try:
            version = model_store.describe(active_id, active_id)["version"]
        except versions.VersionError:  # the pointer names a version that is gone
            version = "missing"
        states = jobs.count_by_status(self.site)
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
    registry.register(SharedStateCollector(current_site()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE)


def init_app(app):
    app.register_blueprint(bp)
