"""The model store: `<instance>/models/<version id>/` holds one model folder per trained version
(weights, card with its evaluation report, gallery), and `<instance>/models/active` names the
version every worker serves. The shipped model (MODEL_DIR) is the version "shipped" and is always
listed. Folders and the pointer are written atomically (temporary name, then rename/replace);
changes of the pointer are serialised by a lock file (`locked`) so a promotion and the gate
(webapp.lifecycle.gate) never interleave.
"""

import fcntl
import os
import re
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ml.data.files import atomic_path, write_json_atomic
from ml.nets.modelfile import CARD_FILE, ModelFileError, load_model_dir, read_card
from webapp.lifecycle.errors import LifecycleError

SHIPPED = "shipped"
POINTER_FILE = "active"
VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class VersionError(LifecycleError):
    """A version that does not exist (not_found) or cannot be activated or exported (refused)."""

    def __init__(self, message, code="not_found"):
        super().__init__(message, code)


def card_accuracy(card: dict):
    return (card.get("evaluation") or {}).get("accuracy")


def card_user_photos(card: dict) -> dict:
    """The card's measure on users' photos ({} when it has none)."""
    return (card.get("feedback") or {}).get("eval") or {}


class ModelStore:
    def __init__(self, root, shipped_dir):
        self.root = Path(root)
        self.shipped_dir = Path(shipped_dir)
        self.pointer = self.root / POINTER_FILE

    def path(self, version_id: str) -> Path:
        if version_id == SHIPPED:
            return self.shipped_dir
        if not VERSION_ID.match(version_id or "") or version_id == POINTER_FILE:
            raise VersionError(f"no version {version_id!r}")
        path = self.root / version_id
        if not (path / CARD_FILE).is_file():
            raise VersionError(f"no version {version_id!r}")
        return path

    def active_id(self) -> str:
        try:
            version_id = self.pointer.read_text().strip()
        except FileNotFoundError:
            return SHIPPED
        return version_id or SHIPPED

    def stored_ids(self) -> list:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and VERSION_ID.match(p.name) and (p / CARD_FILE).is_file())

    def describe(self, version_id: str, active_id: str = None) -> dict:
        path = self.path(version_id)
        try:
            card = read_card(path)
        except ModelFileError as error:
            card = {"error": str(error)}
        evaluation = card.get("evaluation") or {}
        return {
            "id": version_id, "version": card.get("version", version_id), "name": card.get("name"),
            "path": str(path), "created": card.get("created"), "shipped": version_id == SHIPPED,
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

    @contextmanager
    def locked(self):
        """Holds the store's lock: the pointer changes under it, one change at a time."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def add(self, model_dir, job_id) -> str:
        """Move a finished model folder into the store as a new version, with one rename (the job
        folders and the store share the instance folder's file system); returns its id. The card's
        version becomes the version id, so every prediction names the store version."""
        self.root.mkdir(parents=True, exist_ok=True)
        model_dir = Path(model_dir)
        card = read_card(model_dir)
        version_id = f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-job{job_id}"
        write_json_atomic(model_dir / CARD_FILE,
                          dict(card, version=version_id, job=job_id, trained_version=card.get("version")))
        os.chmod(model_dir, 0o755)
        os.rename(model_dir, self.root / version_id)  # atomic: readers see no version or all of it
        return version_id

    def activate(self, version_id: str) -> dict:
        """Point every worker at `version_id` after checking that it loads (weights checksum
        included); a damaged version is refused and the active one stays."""
        path = self.path(version_id)
        try:
            load_model_dir(path)
        except ModelFileError as error:
            raise VersionError(f"version {version_id} is damaged and was not activated: {error}", "refused") from None
        with self.locked():
            self.write_pointer(version_id)
        return self.describe(version_id)

    def write_pointer(self, version_id: str):
        """Make `version_id` the active one (hold `locked()`); on disk before it replaces the old."""
        with atomic_path(self.pointer, mode=0o644) as tmp, open(tmp, "w") as f:
            f.write(version_id + "\n")
            f.flush()
            os.fsync(f.fileno())


def store(site) -> ModelStore:
    return ModelStore(site.instance / "models", site.settings["MODEL_DIR"])


def list_versions(site) -> list:
    """[{id, version, name, path, created, shipped, job, active, metrics {accuracy, ...}}]"""
    return store(site).list()
