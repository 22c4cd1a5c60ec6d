"""The promotion gate: a new version goes live by itself only when it is not worse than the active
one, on validation accuracy and, when there are reviewed user photos to measure on, on those too
(`feedback_measure`: accuracy and the share not recognised). Otherwise it waits in the store for a
manual promotion. Runs in the job runner, after a trained model was added to the store.
"""

from ml.data.files import write_json_atomic
from ml.nets.modelfile import CARD_FILE, ModelFileError, load_model_dir, read_card
from ml.predict.predictor import Predictor
from webapp.lifecycle.versions import VersionError, card_accuracy, card_user_photos

MEASURED = ("accuracy", "not_recognised_rate")


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


def record_feedback(store, version_id: str, trained_on: int, eval_items) -> dict:
    """Write into the version's card how many feedback photos it trained on and how it does on
    the evaluation part (which items, by id and hash); returns that section."""
    path = store.path(version_id)
    section = {"trained_on": trained_on, "eval": feedback_measure(path, eval_items)}
    write_json_atomic(path / CARD_FILE, dict(read_card(path), feedback=section))
    return section


def _active_measures(store, active: str, eval_items) -> tuple:
    """(validation accuracy, measure on users' photos) of the active version; the latter on
    the same items as the new version, so both are measured alike."""
    try:
        path = store.path(active)
        return card_accuracy(read_card(path)), feedback_measure(path, eval_items)
    except (VersionError, ModelFileError):
        return None, None


def promotion_gate(store, version_id: str, margin: float, feedback: dict = None) -> dict:
    """Activate the new version only if its validation accuracy is at least the active version's
    minus `margin` and, when `feedback` gives the evaluation part of reviewed user photos
    (spec["feedback"] of a job: eval_items and the two margins), it is not worse on them beyond
    those margins; otherwise it waits for a manual promotion. Returns the decision and why."""
    card = read_card(store.path(version_id))
    new_acc, new_users = card_accuracy(card), card_user_photos(card)
    eval_items = (feedback or {}).get("eval_items") or []
    with store.locked():
        active = store.active_id()
        active_acc, active_users = _active_measures(store, active, eval_items)
        passed = new_acc is not None and (active_acc is None or new_acc >= active_acc - margin)
        users_reason = user_photos_verdict(new_users, active_users, feedback) if eval_items else None
        decision = {"version": version_id, "accuracy": new_acc, "active_before": active,
                    "active_accuracy": active_acc, "margin": margin, "promoted": False,
                    "user_photos": {key: new_users.get(key) for key in MEASURED},
                    "active_user_photos": {key: (active_users or {}).get(key) for key in MEASURED}}
        if users_reason:
            return dict(decision, reason=users_reason)
        if passed:
            try:
                load_model_dir(store.path(version_id))
            except ModelFileError as error:
                return dict(decision, reason=f"damaged: {error}")
            store.write_pointer(version_id)
        decision["promoted"] = passed
        decision["reason"] = "passed the gate" if passed else "below the active version's accuracy minus margin"
    return decision
