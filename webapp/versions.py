"""The model store: `<instance>/models/<version id>/` holds one model folder per trained version
(weights, card with its evaluation report, gallery), and `<instance>/models/active` names the
version every worker serves. The shipped model (MODEL_DIR) is the version "shipped" and is always
listed. Besides validation accuracy, a version can be measured on the evaluation part of accepted
user feedback ("photos from your users", `feedback_measure`), and the gate compares both.
Folders and the pointer are written atomically (temporary name, then rename/replace);
changes of the pointer are serialised by a lock file so a promotion and a gate never interleave.
"""

import fcntl
import os
import re
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from flask import current_app

from ml.modelfile import CARD_FILE, ModelFileError, load_model_dir, read_card, write_json_atomic
from ml.predict import Predictor
from webapp.errors import AppError

SHIPPED = "shipped"
POINTER_FILE = "active"
VERSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class VersionError(AppError):
    """A version that does not exist (status 404) or cannot be activated (status 409)."""

    def __init__(self, message, status=404):
        super().__init__(status, "not_found" if status == 404 else "refused", message)


def card_accuracy(card: dict):
    return (card.get("evaluation") or {}).get("accuracy")


def card_user_photos(card: dict) -> dict:
    """The card's measure on users' photos ({} when it has none)."""
    return (card.get("feedback") or {}).get("eval") or {}


def feedback_measure(model_path, items) -> dict | None:
    """How a version does on reviewed user photos `items` ([{id, hash, label, file}], file: the
    32x32 model input): accuracy on those of the ten classes, the share of them it calls "none of
    these" (not recognised), and the share of "none of these" photos it does call so. None when
    there are no items."""
    if not items:
        return None
    predictor = Predictor(model_path, device="cpu")
    results = predictor.predict_arrays([predictor.decode(item["file"]) for item in items])
    known = [(item, r) for item, r in zip(items, results) if item["label"] in predictor.classes]
    unknown = [r for item, r in zip(items, results) if item["label"] not in predictor.classes]

    def share(hits, of):
        return sum(hits) / len(of) if of else None
    return {"images": len(items), "known_images": len(known),
            "accuracy": share([r["label"] == item["label"] for item, r in known], known),
            "not_recognised_rate": share([not r["recognised"] for _, r in known], known),
            "none_caught_rate": share([not r["recognised"] for r in unknown], unknown),
            "items": [{"id": item["id"], "hash": item["hash"]} for item in items]}


def user_photos_verdict(new: dict, active: dict, feedback: dict):
    """Why the new version is worse than the active one on users' photos, or None."""
    if not new or not active or new.get("accuracy") is None or active.get("accuracy") is None:
        return None  # nothing to compare on
    if new["accuracy"] < active["accuracy"] - feedback["accuracy_margin"]:
        return "below the active version's accuracy on users' photos minus margin"
    if new["not_recognised_rate"] > active["not_recognised_rate"] + feedback["unrecognised_margin"]:
        return "more of users' photos not recognised than the active version plus margin"
    return None


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
    def _locked(self):
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
            raise VersionError(f"version {version_id} is damaged and was not activated: {error}", 409) from None
        with self._locked():
            self._write_pointer(version_id)
        return self.describe(version_id)

    def _write_pointer(self, version_id: str):
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".active.")
        with os.fdopen(fd, "w") as f:
            f.write(version_id + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, self.pointer)

    def record_feedback(self, version_id: str, trained_on: int, eval_items) -> dict:
        """Write into the version's card how many feedback photos it trained on and how it does on
        the evaluation part (which items, by id and hash); returns that section."""
        path = self.path(version_id)
        section = {"trained_on": trained_on, "eval": feedback_measure(path, eval_items)}
        write_json_atomic(path / CARD_FILE, dict(read_card(path), feedback=section))
        return section

    def _active_measures(self, active: str, eval_items) -> tuple:
        """(validation accuracy, measure on users' photos) of the active version; the latter on
        the same items as the new version, so both are measured alike."""
        try:
            path = self.path(active)
            return card_accuracy(read_card(path)), feedback_measure(path, eval_items)
        except (VersionError, ModelFileError):
            return None, None

    def gate(self, version_id: str, margin: float, feedback: dict = None) -> dict:
        """Promotion gate: activate the new version only if its validation accuracy is at least the
        active version's minus `margin` and, when `feedback` gives the evaluation part of reviewed
        user photos (spec["feedback"] of a job: eval_items and the two margins), it is not worse
        on them beyond those margins; otherwise it waits for a manual promotion."""
        card = read_card(self.path(version_id))
        new_acc, new_users = card_accuracy(card), card_user_photos(card)
        eval_items = (feedback or {}).get("eval_items") or []
        with self._locked():
            active = self.active_id()
            active_acc, active_users = self._active_measures(active, eval_items)
            passed = new_acc is not None and (active_acc is None or new_acc >= active_acc - margin)
            users_reason = user_photos_verdict(new_users, active_users, feedback) if eval_items else None
            decision = {"version": version_id, "accuracy": new_acc, "active_before": active,
                        "active_accuracy": active_acc, "margin": margin, "promoted": False,
                        "user_photos": {key: new_users.get(key) for key in ("accuracy", "not_recognised_rate")},
                        "active_user_photos": {key: (active_users or {}).get(key)
                                               for key in ("accuracy", "not_recognised_rate")}}
            if users_reason:
                decision["reason"] = users_reason
                return decision
            if passed:
                try:
                    load_model_dir(self.path(version_id))
                except ModelFileError as error:
                    return dict(decision, reason=f"damaged: {error}")
                self._write_pointer(version_id)
            decision["promoted"] = passed
            decision["reason"] = "passed the gate" if passed else "below the active version's accuracy minus margin"
        return decision


def store(app=None) -> ModelStore:
    app = app or current_app
    return ModelStore(Path(app.instance_path) / "models", app.config["MODEL_DIR"])


def list_versions(app=None) -> list:
    """[{id, version, name, path, created, shipped, job, active, metrics {accuracy, ...}}]"""
    return store(app).list()
