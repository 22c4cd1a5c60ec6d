"""The model this process serves: the active version of the model store, loaded once per worker
(after fork), never per request, and swapped without a restart when the active version changes.

The active version is a database row with a generation number (webapp.lifecycle.versions), the
same for every web worker of every host. At most once a second a request reads it (one query);
when the generation changed, that request fetches the new version (a verified local copy) and
loads it *before* swapping the reference, so requests in flight finish on the old Predictor, and
the other requests meanwhile keep the current one instead of waiting. A version that fails to load
or to verify (damaged weights, a digest that does not match) is refused: the previous one keeps
serving and `serving_status()` reports the error. A database or store that cannot be reached is an
outage, not a refusal: the worker keeps serving what it has, logs it once, says it in `/readyz`,
and tries again every second until it loads the active version. gunicorn loads the model in each
worker before the worker takes requests (`warm_up`, from post_worker_init).
"""

import threading
import time
import weakref

import torch
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from ml.nets.modelfile import ModelFileError
from ml.predict.predictor import Predictor
from webapp.core import metrics
from webapp.core.site import current_site
from webapp.lifecycle.objectstore import StoreUnavailable
from webapp.lifecycle.versions import SHIPPED, VersionError, store

CHECK_INTERVAL_S = 1.0
READY = "model_ready"  # app.extensions flag, set by warm_up in each worker: /readyz then answers 200


class ServedModel:
    """Per process and per (store, shipped model): the Predictor being served and its version."""

    def __init__(self, model_store, max_pixels, novelty_threshold=None, check_interval=None):
        self.store = model_store
        self.max_pixels = max_pixels
        self.novelty_threshold = novelty_threshold  # None: each version's card says where "none of these" starts
        self.check_interval = CHECK_INTERVAL_S if check_interval is None else check_interval
        self.predictor = None
        self.version_id = None
        self.active_id = None
        self.generation_seen = None  # the generation last acted on (loaded, or refused as damaged)
        self.checked_at = 0.0
        self.error = None            # why the active version is not the one served
        self.unreachable = None      # why the database or the store cannot be reached, during an outage
        self._load_lock = threading.Lock()

    def get(self, logger) -> Predictor:
        if self.predictor is not None and time.monotonic() - self.checked_at < self.check_interval:
            return self.predictor
        # one thread checks and loads; the others keep the current Predictor meanwhile rather than
        # wait (a store that does not answer must not hold up every request)
        if not self._load_lock.acquire(blocking=self.predictor is None):
            return self.predictor
        try:
            if self.predictor is None or time.monotonic() - self.checked_at >= self.check_interval:
                self._refresh(logger)
        finally:
            self._load_lock.release()
        return self.predictor

    def _refresh(self, logger):
        self.checked_at = time.monotonic()
        try:
            wanted, generation = self.store.active()
        except SQLAlchemyError as error:
            self._outage(logger, f"database unreachable: {error.__class__.__name__}: {str(error).splitlines()[0]}")
            return
        self.active_id = wanted
        if self.predictor is not None and generation == self.generation_seen:
            return
        try:
            if wanted != self.version_id or self.predictor is None:
                self._load(wanted)
            self.error = None
        except StoreUnavailable as error:
            self._outage(logger, f"store unreachable: {error}")
            return  # generation_seen unchanged: tried again at the next check
        except (ModelFileError, VersionError) as error:
            self.error = f"active version {wanted} refused: {error}"
            logger.error("%s; still serving %s", self.error, self.version_id or SHIPPED)
            if self.predictor is None:  # nothing served yet: fall back to the shipped model
                self._load(SHIPPED)
        self.generation_seen = generation
        if self.unreachable:
            logger.warning("%s is over; serving %s", self.unreachable, self.version_id)
            self.unreachable = None

    def _outage(self, logger, reason):
        """Keep serving what this worker has (the shipped model when nothing yet); log once per outage."""
        if self.unreachable is None:
            logger.error("%s; still serving %s until it is back", reason, self.version_id or SHIPPED)
        self.unreachable = reason
        if self.predictor is None:
            self._load(SHIPPED)

    def _load(self, version_id):
        predictor = Predictor(self.store.path(version_id), max_pixels=self.max_pixels,
                              novelty_threshold=self.novelty_threshold)
        _version_ids[predictor] = version_id
        self.predictor, self.version_id = predictor, version_id  # one reference swap
        metrics.model_served(version_id, predictor)


_lock = threading.Lock()
_served = {}
# Predictor -> its id in the model store: a request holds the Predictor it started with, and the
# served version may be swapped before it ends, so the id is looked up from the Predictor itself
_version_ids = weakref.WeakKeyDictionary()


def version_id_of(predictor) -> str:
    """The model store's id of the version a Predictor of this process was loaded from."""
    return _version_ids.get(predictor, "unknown")


def _novelty_threshold():
    configured = current_app.config.get("NOVELTY_THRESHOLD")
    return None if configured is None else float(configured)


def _served_model() -> ServedModel:
    config = current_app.config
    threshold = _novelty_threshold()
    # the threshold is part of the key: two apps of one process with different settings must not
    # share a Predictor; the paths as configured, not resolve()d (1.4% of a served worker's time);
    # the store is made only when the key is new (not per request)
    key = (current_app.instance_path, str(config["MODEL_DIR"]), config.get("DATABASE_URL"),
           config.get("MODEL_STORE_URL"), threshold)
    with _lock:
        if key not in _served:
            torch.set_num_threads(int(config["TORCH_THREADS"]))
            _served[key] = ServedModel(store(current_site()), config["MAX_PIXELS"], threshold)
        return _served[key]


def current_predictor() -> Predictor:
    """The Predictor for the active model version (`.name`, `.version` name it)."""
    return _served_model().get(current_app.logger)


def serving_status() -> dict:
    """What this worker serves: {"active": the active row's version, "serving": the loaded version,
    "error": why the active one was refused, "unreachable": why the database or the store cannot be
    reached, during an outage}."""
    served = _served_model()
    served.get(current_app.logger)
    return {"active": served.active_id or served.version_id, "serving": served.version_id,
            "error": served.error, "unreachable": served.unreachable}


def warm_up(app):
    """Load the active model in this process (gunicorn calls it after fork); /readyz then answers 200."""
    with app.app_context():
        current_predictor()
    app.extensions[READY] = True


def is_ready(app) -> bool:
    return bool(app.extensions.get(READY))
