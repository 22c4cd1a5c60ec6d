"""Photos users sent to correct a prediction: the only photos this product ever keeps.

A feedback item is one row of the admin database's `feedback` table and two objects in the object
store (webapp.lifecycle.objectstore: the instance folder's `store/` or S3, so every host reads them):
`feedback/<hash>.jpg`, the photo re-encoded from its pixels (so no EXIF, GPS or other metadata of
the upload survives; longest side at most 512 px), and `feedback/<hash>.png`, the 32x32 input the
model saw, decoded exactly as a prediction decodes it; webapp.feedback.intake receives them and
`add` keeps them. Nothing is kept unless the user sent it as feedback; a delete removes both
objects (no host keeps a copy of them outside a training job's snapshot, which the delete removes
on this host too).
The hash is of the re-encoded pixels, so the same photo sent twice is one item. Items are reviewed
by an admin (accepted, relabelled, rejected, deleted for good) and the accepted ones are split by
hash into a training part and an evaluation part, which jobs snapshot (see `snapshot`).
"""

import io
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path

from webapp.lifecycle.db import write_transaction
from webapp.lifecycle.errors import LifecycleError
from webapp.lifecycle.objectstore import LocalStore, ObjectMissing
from webapp.lifecycle.versions import site_store

NONE = "none"                  # the label of "none of these"
STATUSES = ("pending", "accepted", "rejected")
REVIEWED = ("accepted", "rejected")
EVAL_ONE_IN = 5                # one accepted item in five (by hash) is only ever used for evaluation
FOLDER = "feedback"


class FeedbackError(LifecycleError):
    """A refused feedback request or review action (bad_label, bad_request, not_found)."""


def photo_key(digest: str, kind: str) -> str:
    """The store key of an item's photo ("jpg") or model input ("png")."""
    return f"{FOLDER}/{digest}.{kind}"


def folder(site) -> Path | None:
    """Where the instance folder's store keeps the photos (None when the store is S3)."""
    objects = site_store(site)
    return objects.root / FOLDER if isinstance(objects, LocalStore) else None


def split_of(digest: str) -> str:
    """"eval" or "train", from the content hash alone: an item never moves from one to the other,
    so a version is never measured on photos it was trained on."""
    return "eval" if int(digest[:8], 16) % EVAL_ONE_IN == 0 else "train"


def check_label(label, classes) -> str:
    if label not in (*classes, NONE):
        raise FeedbackError(f"label must be one of {', '.join(classes)} or '{NONE}', not {label!r}", "bad_label")
    return label


# ---- reading ----

def _iso(timestamp):
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds") if timestamp else None


def item_dict(row) -> dict:
    return {"id": row["id"], "hash": row["hash"], "claimed": row["claimed"], "label": row["label"],
            "predicted": row["predicted"], "version": row["version"], "status": row["status"],
            "split": split_of(row["hash"]), "sends": row["sends"],
            "created": _iso(row["created"]), "reviewed": _iso(row["reviewed"])}


def list_items(site, status=None, label=None) -> list:
    """Items newest first, optionally only those of one status and/or (current) label."""
    if status not in (None, *STATUSES):
        raise FeedbackError(f"status must be one of {', '.join(STATUSES)}")
    where, args = [], {}
    for column, value in (("status", status), ("label", label)):
        if value:
            where.append(f"{column} = :{column}")
            args[column] = value
    sql = "SELECT * FROM feedback" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
    with site.database() as conn:
        return [item_dict(row) for row in conn.execute(sql, args).fetchall()]


def get(site, item_id) -> dict:
    with site.database() as conn:
        row = conn.execute("SELECT * FROM feedback WHERE id = :id", {"id": item_id}).fetchone()
    if row is None:
        raise FeedbackError(f"no feedback item {item_id}", "not_found")
    return item_dict(row)


def photo_bytes(site, item_id, kind="jpg") -> bytes:
    """The re-encoded photo (jpg) or the model input (png) of an item, from the store; not_found
    when gone. Never cached on the host: a delete must leave no copy behind."""
    try:
        return site_store(site).get_bytes(photo_key(get(site, item_id)["hash"], kind))
    except ObjectMissing:
        raise FeedbackError(f"feedback item {item_id} has no photo", "not_found") from None


# ---- receiving ----

def add(site, conn, photo: dict, fields: tuple) -> tuple:
    """Keep a checked photo: `photo` {hash, jpg, png} (the re-encoded photo, the model input),
    `fields` (label, predicted, version). Call it inside a write transaction of `conn`; a photo
    already kept only counts one more send. Returns (item id, created)."""
    row = conn.execute("SELECT id FROM feedback WHERE hash = :hash", {"hash": photo["hash"]}).fetchone()
    if row:
        conn.execute("UPDATE feedback SET sends = sends + 1 WHERE id = :id", {"id": row["id"]})
        return row["id"], False
    objects = site_store(site)
    for kind in ("jpg", "png"):  # stored before the row: a row always has its photos
        objects.put_bytes(photo_key(photo["hash"], kind), photo[kind])
    label, predicted, version = fields
    item_id = conn.execute("INSERT INTO feedback (hash, claimed, label, predicted, version, created) "
                           "VALUES (:hash, :label, :label, :predicted, :version, :created) RETURNING id",
                           {"hash": photo["hash"], "label": label, "predicted": predicted, "version": version,
                            "created": time.time()}).fetchone()["id"]
    return item_id, True


# ---- reviewing ----

def review(site, item_ids, status, classes, label=None) -> list:
    """Accept or reject items, relabelling them when `label` (one of `classes` or "none") is
    given; returns them."""
    if status not in REVIEWED:
        raise FeedbackError(f"status must be one of {', '.join(REVIEWED)}")
    if label is not None:
        check_label(label, classes)
    items = [get(site, i) for i in item_ids]  # not_found before any change
    with site.database() as conn, write_transaction(conn):
        for item in items:
            conn.execute("UPDATE feedback SET status = :status, label = :label, reviewed = :at WHERE id = :id",
                         {"status": status, "label": label or item["label"], "at": time.time(), "id": item["id"]})
    return [get(site, i) for i in item_ids]


def delete(site, item_ids):
    """Delete items for good: the row, both objects, and the copies this host's training jobs made
    of them."""
    items = [get(site, i) for i in item_ids]
    jobs, objects = site.instance / "jobs", site_store(site)
    for item in items:
        for kind in ("jpg", "png"):
            objects.delete(photo_key(item["hash"], kind))
        for path in list(jobs.glob(f"*/feedback/*/*/{item['hash']}.png")) if jobs.is_dir() else []:
            path.unlink(missing_ok=True)
        with site.database() as conn:
            conn.execute("DELETE FROM feedback WHERE id = :id", {"id": item["id"]})


# ---- using ----

def accepted(site) -> list:
    """Accepted items of the ten classes and of "none of these", oldest first."""
    return list(reversed(list_items(site, "accepted")))


def accepted_counts(site) -> dict:
    """{"train": n, "eval": n} of the accepted items a job would use now ("none of these" is never
    trained on)."""
    items = accepted(site)
    return {"train": sum(split_of(i["hash"]) == "train" and i["label"] != NONE for i in items),
            "eval": sum(split_of(i["hash"]) == "eval" for i in items)}


def export_zip(site) -> bytes:
    """The accepted items as an image-folder dataset: <class>/<hash>.jpg (the re-encoded photos).
    "None of these" has no class folder: a folder would be read as an eleventh class."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:  # JPEGs do not compress further
        objects = site_store(site)
        for item in accepted(site):
            if item["label"] == NONE:
                continue
            try:
                photo = objects.get_bytes(photo_key(item["hash"], "jpg"))
            except ObjectMissing:
                continue  # deleted meanwhile
            archive.writestr(f"{item['label']}/{item['hash']}.jpg", photo)
    return buffer.getvalue()


def snapshot(site, job_dir, include_train: bool) -> dict:
    """Copy the accepted items' model inputs from the store into the job folder, so later reviews do
    not change a running job: the evaluation part always (every new version is measured on it), the
    training part (ten classes only) when `include_train`. Returns what the job's spec records:
    the evaluation items by id, hash and label (the gate reads their photos from the store, on
    whichever host it runs), and `train_items` alike, so a worker on another host can fetch the
    training part (`fetch_items`)."""
    job_dir = Path(job_dir) / FOLDER
    objects = site_store(site)
    train_items, eval_items = [], []
    for item in accepted(site):
        part = split_of(item["hash"])
        if part == "train" and (not include_train or item["label"] == NONE):
            continue
        entry = {"id": item["id"], "hash": item["hash"], "label": item["label"]}
        try:
            fetch_items(objects, [entry], job_dir / part)
        except ObjectMissing:
            continue  # deleted since the listing
        (train_items if part == "train" else eval_items).append(entry)
    return {"trained_on": len(train_items), "train_dir": str(job_dir / "train") if train_items else None,
            "train_items": train_items, "eval_items": eval_items}


def fetch_items(objects, items, part_dir):
    """The model inputs of `items` ([{hash, label}]) from the store as `<part_dir>/<label>/<hash>.png`,
    an image-folder dataset; ObjectMissing when one was deleted."""
    for item in items:
        target = Path(part_dir) / item["label"] / f"{item['hash']}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        objects.get_file(photo_key(item["hash"], "png"), target)
