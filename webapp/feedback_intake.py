"""Receiving feedback: a user's photo and the right answer, checked as an upload is (size,
format, count, decoding) and against the per-client rate limit before anything is written, then
kept as webapp.feedback describes."""

import hashlib
import io
import os
import time
from pathlib import Path

import numpy as np
from flask import current_app, request
from PIL import Image

from ml.images import open_image, to_rgb
from webapp.auth import client_address
from webapp.db import database, write_transaction
from webapp.feedback import FeedbackError, check_label, folder
from webapp.request_photos import RequestError, check_count, collect_files, decode_all
from webapp.serving import current_predictor

PHOTO_MAX_SIDE = 512
JPEG_QUALITY = 90
MAX_FIELD = 100


def _wait_s(conn, client) -> int:
    """Seconds before `client` may send feedback again (0: now)."""
    config = current_app.config
    window = float(config["FEEDBACK_WINDOW_S"])
    conn.execute("DELETE FROM feedback_sends WHERE at < ?", (time.time() - window,))
    rows = conn.execute("SELECT at FROM feedback_sends WHERE client = ? ORDER BY at", (client,)).fetchall()
    if len(rows) < int(config["FEEDBACK_MAX_SENDS"]):
        return 0
    return max(1, int(rows[0]["at"] + window - time.time()) + 1)


def check_rate(conn, client):
    wait = _wait_s(conn, client)
    if wait:
        raise FeedbackError(429, "too_many_requests",
                            f"too much feedback from this address; try again in {wait} seconds")


def _field(name, required=False) -> str | None:
    value = (request.form.get(name) or "").strip()
    if required and not value:
        raise FeedbackError(400, "bad_request", f"the field '{name}' is missing")
    if len(value) > MAX_FIELD or not value.isprintable():
        raise FeedbackError(400, "bad_request", f"the field '{name}' must be a short line of text")
    return value or None


def reencode(data: bytes, max_pixels: int) -> tuple:
    """(JPEG bytes, hash): the photo rebuilt from its pixels (orientation applied, alpha on white),
    longest side at most PHOTO_MAX_SIDE; nothing of the uploaded file but its pixels survives."""
    image = open_image(data, max_pixels)
    try:
        if image.format == "JPEG":
            image.draft("RGB", (2 * PHOTO_MAX_SIDE, 2 * PHOTO_MAX_SIDE))  # a large photo decodes small
        image.seek(0)
        image.load()
        rgb = to_rgb(image)
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise RequestError(400, "corrupt_image", f"the image cannot be read: {error}") from None
    rgb.thumbnail((PHOTO_MAX_SIDE, PHOTO_MAX_SIDE), Image.LANCZOS)
    pixels = np.asarray(rgb, dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=JPEG_QUALITY)
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    return buffer.getvalue(), digest


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes):
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def submit() -> tuple:
    """Store the current request's photo as feedback; returns (item id, created). Every check
    (rate, fields, count, size, format, decoding) runs before anything is written."""
    client = client_address()
    with database(current_app.instance_path) as conn:
        check_rate(conn, client)
    files = collect_files(("image",))
    check_count(files, 1)  # one photo, one claimed label
    predictor = current_predictor()
    label = check_label(_field("label", required=True), predictor.classes)
    predicted, version = _field("predicted"), _field("version")
    array = decode_all(predictor, files)[0]  # the 32x32 input, exactly as a prediction decodes it
    photo, digest = reencode(files[0][1], predictor.max_pixels)
    return _store(client, digest, photo, _png(array), (label, predicted, version))


def _store(client, digest, photo, model_input, fields) -> tuple:
    """The row and, for a new photo, its two files, all under the database's write lock (so a
    send refused by the rate limit there writes nothing); a duplicate only counts one more send."""
    with database(current_app.instance_path) as conn, write_transaction(conn):
        check_rate(conn, client)  # again under the write lock: concurrent sends cannot slip past
        conn.execute("INSERT INTO feedback_sends (client, at) VALUES (?, ?)", (client, time.time()))
        row = conn.execute("SELECT id FROM feedback WHERE hash = ?", (digest,)).fetchone()
        if row:
            conn.execute("UPDATE feedback SET sends = sends + 1 WHERE id = ?", (row["id"],))
            return row["id"], False
        root = folder()
        root.mkdir(exist_ok=True)
        _write_atomic(root / f"{digest}.jpg", photo)
        _write_atomic(root / f"{digest}.png", model_input)
        label, predicted, version = fields
        item_id = conn.execute("INSERT INTO feedback (hash, claimed, label, predicted, version, created) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               (digest, label, label, predicted, version, time.time())).lastrowid
        return item_id, True
