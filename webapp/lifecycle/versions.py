"""The model store: trained versions in the object store (webapp.lifecycle.objectstore, the instance
folder's `store/` or S3 by MODEL_STORE_URL) under `versions/<id>/`, each an immutable folder with a
sha256 manifest, and the active version as the database's `active_model` row (id 1), whose
`generation` grows by one at every change so every web worker of every host compares one integer to
know it must reload (webapp.predict.serving).

A host works on a verified local copy of a version (`path`: fetched into `<instance>/cache/versions`
and checked against the manifest once); a copy whose digest does not match is refused ("damaged")
and never served. The shipped model (MODEL_DIR) is the version "shipped", always listed, never in
the store. Changes of the active row happen in a database write transaction (`locked`), so a
promotion, a rollback and the gate (webapp.lifecycle.gate) never interleave, on any host.

An instance from before the store (`<instance>/models/<id>/` folders and a `models/active` pointer
file) is imported once, the first time a process uses its store: each folder put into the store, the
pointer file turned into the row when there is no row yet. The old folders are left where they were.
"""

import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ml.data.files import write_json_atomic
from ml.nets.modelfile import CARD_FILE, ModelFileError, load_model_dir, read_card
from webapp.lifecycle.db import database, sqlite_url, write_transaction
from webapp.lifecycle.errors import LifecycleError
from webapp.lifecycle.objectstore import (MANIFEST, DigestMismatch, ObjectExists, ObjectMissing, StoreError,
                                          cache_name, open_store)

SHIPPED = "shipped"
POINTER_FILE = "active"          # the pointer file of the old single-host layout
PREFIX = "versions"              # versions/<id>/...: immutable
NOTES = "version-notes"          # version-notes/<id>/feedback.json: measured after the version was stored
VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

log = logging.getLogger(__name__)
_imported = set()                # ((instance, store url, database url), step) this process has imported
_import_lock = threading.Lock()
_notes = {}                      # (store url, id) -> feedback section: written once, so cached once seen
_stores = {}                     # (pid, url, instance) -> ObjectStore: one S3 client per process, not per request


class VersionError(LifecycleError):
    """A version that does not exist (not_found), cannot be activated or exported (refused), or whose
    stored files do not match their digests (damaged)."""

    def __init__(self, message, code="not_found"):
        super().__init__(message, code)


def card_accuracy(card: dict):
    return (card.get("evaluation") or {}).get("accuracy")


def card_user_photos(card: dict) -> dict:
    """The card's measure on users' photos ({} when it has none)."""
    return (card.get("feedback") or {}).get("eval") or {}


class ModelStore:
    """`root` is the old layout's `<instance>/models` (imported from, never written); the instance
    folder is its parent. `database_url` and `store_url` default to DATABASE_URL and MODEL_STORE_URL
    of the environment (the job runner's), then to the instance folder's SQLite file and store."""

    def __init__(self, root, shipped_dir, database_url=None, store_url=None):
        self.root = Path(root)
        self.instance = self.root.parent
        self.shipped_dir = Path(shipped_dir)
        self.pointer = self.root / POINTER_FILE
        self.database_url = database_url or os.environ.get("DATABASE_URL") or sqlite_url(self.instance)
        self.store_url = os.environ.get("MODEL_STORE_URL") if store_url is None else store_url
        self.cache = self.instance / "cache" / PREFIX
        self._objects = None
        self._held = threading.local()  # the connection of a `locked()` block of this thread

    @property
    def objects(self):
        """The object store, opened on first use (an S3 client costs a few milliseconds to make)."""
        if self._objects is None:
            self._objects = shared_store(self.store_url, self.instance)
        return self._objects

    # ---- versions ----

    def check_id(self, version_id: str):
        if not isinstance(version_id, str) or not VERSION_ID.match(version_id) or version_id == POINTER_FILE:
            raise VersionError(f"no version {version_id!r}")

    def path(self, version_id: str) -> Path:
        """A local copy of the version, checked against its manifest (fetched once per host)."""
        if version_id == SHIPPED:
            return self.shipped_dir
        self.check_id(version_id)
        self.import_old_layout()
        try:
            return self.objects.fetch_folder(f"{PREFIX}/{version_id}", self.cache)
        except ObjectMissing:
            raise VersionError(f"no version {version_id!r}") from None
        except DigestMismatch as error:
            raise VersionError(f"version {version_id} is damaged (a checksum does not match) and is "
                               f"refused: {error}", "damaged") from None

    def cached_path(self, version_id: str) -> Path:
        """Where `path` puts the version's copy on this host (present or not)."""
        return self.cache / cache_name(f"{PREFIX}/{version_id}")

    def stored_ids(self) -> list:
        """The versions whose manifest is in the store: complete ones only."""
        self.import_old_layout()
        ids = set()
        for key in self.objects.list(PREFIX):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST and VERSION_ID.match(parts[1]):
                ids.add(parts[1])
        return sorted(ids)

    def notes(self, version_id: str) -> dict:
        """The version's feedback section, measured after it was stored ({} when none)."""
        key = (self.objects.url, version_id)
        if key not in _notes:
            try:
                raw = self.objects.get_bytes(f"{NOTES}/{version_id}/feedback.json")
            except ObjectMissing:
                return {}
            _notes[key] = json.loads(raw)
        return _notes[key]

    def write_notes(self, version_id: str, section: dict):
        """Record what was measured on a stored version (its files never change)."""
        self.objects.put_bytes(f"{NOTES}/{version_id}/feedback.json", json.dumps(section).encode())
        _notes[(self.objects.url, version_id)] = section

    def card(self, version_id: str) -> dict:
        """The version's card, with its feedback section when one was measured after it was stored."""
        return self.noted(version_id, read_card(self.path(version_id)))

    def noted(self, version_id: str, card: dict) -> dict:
        """`card` (the version's card.json) with the feedback section noted beside the version."""
        notes = {} if version_id == SHIPPED else self.notes(version_id)
        return dict(card, feedback=notes) if notes else card

    def describe(self, version_id: str, active_id: str = None) -> dict:
        try:
            card, path = self.card(version_id), str(self.path(version_id))
        except (ModelFileError, VersionError, StoreError) as error:
            if isinstance(error, VersionError) and error.code == "not_found":
                raise
            card, path = {"error": str(error)}, str(self.cached_path(version_id))
        evaluation = card.get("evaluation") or {}
        return {
            "id": version_id, "version": card.get("version", version_id), "name": card.get("name"),
            "path": path, "created": card.get("created"), "shipped": version_id == SHIPPED,
            "job": card.get("job"), "active": version_id == (active_id or self.active_id()),
            "metrics": {"accuracy": evaluation.get("accuracy"), "loss": evaluation.get("loss"),
                        "split": evaluation.get("split"), "images": evaluation.get("images")},
            "user_photos": {key: card_user_photos(card).get(key)
                            for key in ("accuracy", "not_recognised_rate", "images")},
            "trained_on_feedback": (card.get("feedback") or {}).get("trained_on"),
            "error": card.get("error"),
        }

    def list(self) -> list:
        """Every version, newest first, the shipped one last."""
        active = self.active_id()
        stored = [self.describe(v, active) for v in self.stored_ids()]
        stored.sort(key=lambda v: v["created"] or "", reverse=True)
        return stored + [self.describe(SHIPPED, active)]

    def add(self, model_dir, job_id) -> str:
        """Put a finished model folder into the store as a new version; returns its id. The card's
        version becomes the version id, so every prediction names the store version. The folder is
        left where it was (the caller removes it)."""
        model_dir = Path(model_dir)
        card = read_card(model_dir)
        version_id = f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-job{job_id}"
        write_json_atomic(model_dir / CARD_FILE,
                          dict(card, version=version_id, job=job_id, trained_version=card.get("version")))
        self.objects.put_folder(f"{PREFIX}/{version_id}", model_dir)  # manifest last: all of it or none
        return version_id

    # ---- the active version ----

    def active(self) -> tuple:
        """(active version id, generation) in one query; ("shipped", 0) before any change."""
        self.import_old_layout(versions=False)
        with self._connection() as conn:
            row = conn.execute("SELECT version, generation FROM active_model WHERE id = 1").fetchone()
        return (row["version"], row["generation"]) if row else (SHIPPED, 0)

    def active_id(self) -> str:
        return self.active()[0] or SHIPPED

    def active_generation(self) -> int:
        return self.active()[1]

    @contextmanager
    def _connection(self):
        """The `locked()` block's connection on this thread (its reads see its writes), else a new one."""
        held = getattr(self._held, "conn", None)
        if held is not None:
            yield held
            return
        with self._database() as conn:
            yield conn

    def _database(self):
        if self.database_url == sqlite_url(self.instance):  # the instance's own file: its folder first
            self.instance.mkdir(parents=True, exist_ok=True)
        return database(self.database_url)

    @contextmanager
    def locked(self):
        """A database write transaction: the active row changes under it, one change at a time on
        every host (no file lock: hosts do not share a disk)."""
        with self._database() as conn, write_transaction(conn):
            self._held.conn = conn
            try:
                yield
            finally:
                self._held.conn = None

    def activate(self, version_id: str) -> dict:
        """Point every worker at `version_id` after checking its digests and that it loads (weights
        checksum included); a damaged version is refused and the active one stays."""
        path = self.path(version_id)
        try:
            load_model_dir(path)
        except ModelFileError as error:
            raise VersionError(f"version {version_id} is damaged and was not activated: {error}", "refused") from None
        with self.locked():
            self.write_pointer(version_id)
        return self.describe(version_id)

    def write_pointer(self, version_id: str):
        """Make `version_id` the active one, its generation one more (inside `locked()`, or alone)."""
        with self._pointer_transaction() as conn:
            changed = conn.execute("UPDATE active_model SET version = :version, generation = generation + 1, "
                                   "changed = :at WHERE id = 1 RETURNING generation",
                                   {"version": version_id, "at": time.time()}).fetchone()
            if changed is None:
                conn.execute("INSERT INTO active_model (id, version, generation, changed) "
                             "VALUES (1, :version, 1, :at)", {"version": version_id, "at": time.time()})

    @contextmanager
    def _pointer_transaction(self):
        held = getattr(self._held, "conn", None)
        if held is not None:
            yield held
            return
        with self.locked():
            yield self._held.conn

    # ---- the single-host layout of before ----

    def import_old_layout(self, versions: bool = True):
        """Once per process: the old `models/active` pointer file becomes the row (when there is
        none), and (when `versions`) the old `models/<id>/` folders go into the store."""
        key = (str(self.instance), self.store_url or "", self.database_url)
        wanted = [(key, "pointer")] + ([(key, "versions")] if versions else [])
        if all(step in _imported for step in wanted):
            return
        with _import_lock:
            if not self.root.is_dir():
                _imported.update(wanted)
                return
            if (key, "pointer") not in _imported:
                self._import_pointer()
                _imported.add((key, "pointer"))
            if versions and (key, "versions") not in _imported:
                for folder in sorted(self.root.iterdir()):
                    if folder.is_dir() and VERSION_ID.match(folder.name) and (folder / CARD_FILE).is_file():
                        self._import_folder(folder)
                _imported.add((key, "versions"))

    def _import_pointer(self):
        try:
            version_id = self.pointer.read_text().strip()
        except FileNotFoundError:
            return
        if not version_id:
            return
        with self.locked():
            if self._held.conn.execute("SELECT 1 FROM active_model WHERE id = 1").fetchone() is None:
                self.write_pointer(version_id)
                log.info("the old pointer file %s became the active row: %s", self.pointer, version_id)

    def _import_folder(self, folder: Path):
        if self.objects.exists(f"{PREFIX}/{folder.name}/{MANIFEST}"):
            return
        try:
            self.objects.put_folder(f"{PREFIX}/{folder.name}", folder)
            log.info("imported the version %s into the store %s", folder, self.objects.url)
        except ObjectExists:
            pass  # another process imported it meanwhile
        except ValueError as error:  # a file name the store refuses: the version stays out, said once
            log.error("could not import the version %s into the store: %s", folder, error)


def shared_store(url, instance):
    """The object store `url` names (webapp.lifecycle.objectstore.open_store), made once per process:
    a boto3 client takes milliseconds to make and is safe to share between threads, not across fork."""
    key = (os.getpid(), url or "", str(instance))
    if key not in _stores:
        _stores[key] = open_store(url, instance)
    return _stores[key]


def site_store(site):
    """The site's object store (MODEL_STORE_URL; unset: the instance folder's `store/`)."""
    return shared_store(site.settings.get("MODEL_STORE_URL") or "", site.instance)


def store(site) -> ModelStore:
    settings = site.settings
    return ModelStore(site.instance / "models", settings["MODEL_DIR"], database_url=site.database_url,
                      store_url=settings.get("MODEL_STORE_URL") or "")


def list_versions(site) -> list:
    """[{id, version, name, path, created, shipped, job, active, metrics {accuracy, ...}}]"""
    return store(site).list()
