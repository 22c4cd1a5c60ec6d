"""The promotion gate: a new version goes live by itself only when it is not worse than the active
one, on validation accuracy and, when there are reviewed user photos to measure on, on those too
(`feedback_measure`: accuracy and the share not recognised, on the photos' model inputs read from
the object store). Otherwise it waits in the store for a manual promotion. Runs in the job runner,
after a trained model was added to the store.

The measuring (loading two versions, classifying the photos) happens outside the database's write
transaction, so other hosts' writes never wait for it; the decision is then taken under it, and
taken again on fresh measures if the active version changed meanwhile.
"""

from ml.nets.modelfile import ModelFileError, load_model_dir
from ml.predict.predictor import Predictor
from webapp.lifecycle.feedback import photo_key
from webapp.lifecycle.objectstore import ObjectMissing, StoreError
from webapp.lifecycle.versions import VersionError, card_accuracy, card_user_photos

MEASURED = ("accuracy", "not_recognised_rate")
ATTEMPTS = 3  # decisions retaken when the active version moved while measuring


def item_photo(item, objects):
    """The model input of a feedback item: the file the item names when it is on this host (a
    caller's own copy), else `feedback/<hash>.png` from the store; None when it is gone (deleted:
    the user's photo is no longer ours to measure on)."""
    path = item.get("file")
    if path:
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            pass
    if objects is None:
        return None
    try:
        return objects.get_bytes(photo_key(item["hash"], "png"))
    except ObjectMissing:
        return None



def feedback_measure(model_path, items, objects=None) -> dict | None:
    """How a version does on reviewed user photos `items` ([{id, hash, label, file?}]; the 32x32
    model inputs from `item_photo`, those gone left out): accuracy on those of the ten classes, the
    share of them it calls "none of these" (not recognised), and the share of "none of these"
    photos it does call so. None when there are no items."""
    photos = [(item, item_photo(item, objects)) for item in items or []]
    items = [item for item, photo in photos if photo is not None]
    if not items:
        return None
    predictor = Predictor(model_path, device="cpu")
    results = predictor.predict_arrays([predictor.decode(photo) for _, photo in photos if photo is not None])
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
    """Record beside the stored version (whose files never change: the store's version notes) how
    many feedback photos it trained on and how it does on the evaluation part (which items, by id
    and hash); returns that section, which the version's card (`store.card`) then includes."""
    section = {"trained_on": trained_on,
               "eval": feedback_measure(store.path(version_id), eval_items, store.objects)}
    store.write_notes(version_id, section)
    return section


def _active_measures(store, active: str, eval_items) -> tuple:
    """(validation accuracy, measure on users' photos) of the active version; the latter on
    the same items as the new version, so both are measured alike."""
    try:
        path = store.path(active)
        return card_accuracy(store.card(active)), feedback_measure(path, eval_items, store.objects)
    except (VersionError, ModelFileError, StoreError):
        return None, None


def promotion_gate(store, version_id: str, margin: float, feedback: dict = None) -> dict:
    """Activate the new version only if its validation accuracy is at least the active version's
    minus `margin` and, when `feedback` gives the evaluation part of reviewed user photos
    (spec["feedback"] of a job: eval_items and the two margins), it is not worse on them beyond
    those margins; otherwise it waits for a manual promotion. Returns the decision and why."""
    try:
        card = store.card(version_id)
        load_model_dir(store.path(version_id))
    except (ModelFileError, VersionError) as error:  # never made active, whatever it measured
        return {"version": version_id, "promoted": False, "reason": f"damaged: {error}"}
    new_acc, new_users = card_accuracy(card), card_user_photos(card)
    eval_items = (feedback or {}).get("eval_items") or []
    for _ in range(ATTEMPTS):
        active = store.active_id()
        active_acc, active_users = _active_measures(store, active, eval_items)  # outside the transaction
        with store.locked():
            if store.active_id() != active:
                continue  # promoted or rolled back meanwhile: measure against the new active one
            passed = new_acc is not None and (active_acc is None or new_acc >= active_acc - margin)
            users_reason = user_photos_verdict(new_users, active_users, feedback) if eval_items else None
            decision = {"version": version_id, "accuracy": new_acc, "active_before": active,
                        "active_accuracy": active_acc, "margin": margin, "promoted": False,
                        "user_photos": {key: new_users.get(key) for key in MEASURED},
                        "active_user_photos": {key: (active_users or {}).get(key) for key in MEASURED}}
            if users_reason:
                return dict(decision, reason=users_reason)
            if passed:
                store.write_pointer(version_id)
            decision["promoted"] = passed
            decision["reason"] = "passed the gate" if passed else "below the active version's accuracy minus margin"
            return decision
    return {"version": version_id, "promoted": False,
            "reason": "the active version kept changing while the gate measured; promote it by hand"}
