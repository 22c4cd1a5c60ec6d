"""Receiving feedback: a user's photo and the right answer, checked as an upload is (size,
format, count, decoding) and against the per-client rate limit before anything is written, then
kept as webapp.lifecycle.feedback describes."""

import hashlib

import numpy as np
from flask import request
from PIL import Image

from ml.data.images import encode_image, open_image, to_rgb
from webapp.core.errors import AppError
from webapp.core.ratelimit import FEEDBACK_SENDS, client_address
from webapp.core.site import current_site
from webapp.lifecycle import feedback
from webapp.lifecycle.db import write_transaction
from webapp.predict.request_photos import RequestError, check_count, collect_files, decode_all
from webapp.predict.serving import current_predictor

PHOTO_MAX_SIDE = 512
JPEG_QUALITY = 90
MAX_FIELD = 100


def check_rate(conn, client):
    wait = FEEDBACK_SENDS.wait_s(conn, client)
    if wait:
        raise AppError(429, "too_many_requests", f"too much feedback from this address; try again in {wait} seconds")


def _field(name, required=False) -> str | None:
    value = (request.form.get(name) or "").strip()
    if required and not value:
        raise AppError(400, "bad_request", f"the field '{name}' is missing")
    if len(value) > MAX_FIELD or not value.isprintable():
        raise AppError(400, "bad_request", f"the field '{name}' must be a short line of text")
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
    digest = hashlib.sha256(f"{pixels.shape}".encode() + pixels.tobytes()).hexdigest()
    return encode_image(pixels, "JPEG", quality=JPEG_QUALITY), digest


def submit() -> tuple:
    """Store the current request's photo as feedback; returns (item id, created). Every check
    (rate, fields, count, size, format, decoding) runs before anything is written."""
    client, site = client_address(), current_site()
    with site.database() as conn:
        check_rate(conn, client)
    files = collect_files(("image",))
    check_count(files, 1)  # one photo, one claimed label
    predictor = current_predictor()
    label = feedback.check_label(_field("label", required=True), predictor.classes)
    predicted, version = _field("predicted"), _field("version")
    array = decode_all(predictor, files)[0]  # the 32x32 input, exactly as a prediction decodes it
    jpg, digest = reencode(files[0][1], predictor.max_pixels)
    photo = {"hash": digest, "jpg": jpg, "png": encode_image(array)}
    # the row and, for a new photo, its two files, all under the database's write lock (so a send
    # refused by the rate limit there writes nothing); a duplicate only counts one more send
    with site.database() as conn, write_transaction(conn):
        check_rate(conn, client)  # again under the write lock: concurrent sends cannot slip past
        FEEDBACK_SENDS.record(conn, client)
        return feedback.add(site, conn, photo, (label, predicted, version))
