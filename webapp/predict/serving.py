"""The model this process serves: the active version of the model store, loaded once per worker
(after fork), never per request, and swapped without a restart when the active pointer changes.

At most once a second a request stats the pointer file; when it changed, that request loads the
new version *before* swapping the reference, so requests in flight finish on the old Predictor
and nobody waits for a half-loaded model. A version that fails to load (damaged weights) is
refused: the previous one keeps serving and `serving_status()` reports the error. gunicorn loads it
in each worker before the worker takes requests (`warm_up`, from post_worker_init).
"""

import os
import threading
import time

import torch
from flask import current_app

from ml.nets.modelfile import ModelFileError
from ml.predict.predictor import Predictor
from webapp.core import metrics
from webapp.core.site import current_site
from webapp.lifecycle.versions import SHIPPED, VersionError, store

CHECK_INTERVAL_S = 1.0
READY = "model_ready"  # app.extensions flag, set by warm_up in each worker: /readyz then answers 200


class ServedModel:
    """Per process and per (store, shipped model): the Predictor being served and its version."""

    def __init__(self, model_store, max_pixels, novelty_threshold=None):
        self.store = model_store
        self.max_pixels = max_pixels
        self.novelty_threshold = novelty_threshold  # None: each version's card says where "none of these" starts
        self.predictor = None
        self.version_id = None
        self.pointer_seen = None   # (inode, mtime_ns) of the pointer last acted on
        self.checked_at = 0.0
        self.error = None          # why the active version is not the one served
        self._load_lock = threading.Lock()

    def _pointer_signature(self):
        try:
            st = os.stat(self.store.pointer)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def get(self, logger) -> Predictor:
        now = time.monotonic()
        if self.predictor is not None and now - self.checked_at < CHECK_INTERVAL_S:
            return self.predictor
        with self._load_lock:  # one thread loads; the others keep the current Predictor meanwhile
            if self.predictor is None or time.monotonic() - self.checked_at >= CHECK_INTERVAL_S:
                self._refresh(logger)
        return self.predictor

    def _refresh(self, logger):
        signature = self._pointer_signature()
        self.checked_at = time.monotonic()
        if self.predictor is not None and signature == self.pointer_seen:
            return
        self.pointer_seen = signature
        wanted = self.store.active_id()
        if wanted == self.version_id and self.predictor is not None:
            self.error = None
            return
        try:
            self._load(wanted)
            self.error = None
        except (ModelFileError, VersionError) as error:
            self.error = f"active version {wanted} refused: {error}"
            logger.error("%s; still serving %s", self.error, self.version_id or SHIPPED)
            if self.predictor is None:  # nothing served yet: fall back to the shipped model
                self._load(SHIPPED)

    def _load(self, version_id):
        predictor = Predictor(self.store.path(version_id), max_pixels=self.max_pixels,
                              novelty_threshold=self.novelty_threshold)
        self.predictor, self.version_id = predictor, version_id  # one reference swap
        metrics.model_served(version_id, predictor)


_lock = threading.Lock()
_served = {}


def _novelty_threshold():
    configured = current_app.config.get("NOVELTY_THRESHOLD")
    return None if configured is None else float(configured)


def _served_model() -> ServedModel:
    model_store = store(current_site())
    threshold = _novelty_threshold()
    # the threshold is part of the key: two apps of one process with different settings must not
    # share a Predictor; the paths as configured, not resolve()d (1.4% of a served worker's time)
    key = (str(model_store.root), str(model_store.shipped_dir), threshold)
    with _lock:
        if key not in _served:
            torch.set_num_threads(int(current_app.config["TORCH_THREADS"]))
            _served[key] = ServedModel(model_store, current_app.config["MAX_PIXELS"], threshold)
        return _served[key]


def current_predictor() -> Predictor:
    """The Predictor for the active model version (`.name`, `.version` name it)."""
    return _served_model().get(current_app.logger)


def serving_status() -> dict:
    """What this worker serves: {"active": pointer's version, "serving": loaded version, "error"}."""
    served = _served_model()
    served.get(current_app.logger)
    return {"active": served.store.active_id(), "serving": served.version_id, "error": served.error}


def warm_up(app):
    """Load the active model in this process (gunicorn calls it after fork); /readyz then answers 200."""
    with app.app_context():
        current_predictor()
    app.extensions[READY] = True


def is_ready(app) -> bool:
    return bool(app.extensions.get(READY))
