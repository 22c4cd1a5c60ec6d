"""Reading photos out of a request, shared by the upload page and the JSON APIs.

Files come from multipart fields or from a raw request body. They stay in memory (the body is
capped by MAX_CONTENT_LENGTH) and are never written to disk or served back. Every problem
becomes a `RequestError` carrying the HTTP status, a stable code and a message naming the file;
the decoder's error codes are mapped to HTTP statuses here.
"""

import base64
import io
import posixpath

from flask import Request, current_app, request
from werkzeug.exceptions import RequestEntityTooLarge

from ml.data.images import ImageError, encode_image
from webapp.core.errors import AppError
from webapp.core.metrics import count_predictions
from webapp.core.site import current_site
from webapp.lifecycle import traffic
from webapp.predict.batching import batcher
from webapp.predict.serving import current_predictor, version_id_of

RAW_BODY_NAME = "image"
MAX_FILENAME = 200
IMAGE_ERROR_STATUS = {"unsupported_media_type": 415, "image_too_large": 413}  # other decoder codes: 400


class RequestError(AppError):
    """A request whose photos cannot be classified."""


class InMemoryRequest(Request):
    """Keeps multipart file parts in memory instead of spooling large ones to a temporary file."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def clean_filename(name: str | None) -> str:
    """The last path component of a client-supplied name, for display only."""
    name = posixpath.basename((name or "").replace("\\", "/")).strip()
    return name[:MAX_FILENAME] or RAW_BODY_NAME


def form_files(fields) -> list:
    parts = [(part.filename, part.read()) for field in fields for part in request.files.getlist(field)]
    # a form submitted with no file chosen sends one empty part with an empty filename
    return [(clean_filename(name), data) for name, data in parts if name or data]


def body_file() -> list:
    body = request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and request.content_length is None and len(body) >= limit:
        raise RequestEntityTooLarge()  # werkzeug cuts a chunked body at the limit instead of refusing it
    return [(clean_filename(request.args.get("filename")), body)] if body else []


def collect_files(fields) -> list:
    """[(filename, bytes)] from the multipart `fields`, or the raw body as one file."""
    # anything but multipart is the image itself (curl --data-binary sends it as a urlencoded form)
    files = form_files(fields) if request.mimetype == "multipart/form-data" else body_file()
    if not files:
        names = " or ".join(f"'{field}'" for field in fields)
        raise RequestError(400, "no_file", f"no image was sent: attach one or more files in the field {names}, "
                                          "or send the image itself as the request body")
    return files


def check_count(files, max_files: int) -> None:
    if len(files) > max_files:
        raise RequestError(413, "too_many_files",
                          f"{len(files)} files were sent; the limit is {max_files} per request")


def decode_all(predictor, files) -> list:
    """Decode every file (header checks first inside decode); the first bad one stops everything."""
    arrays = []
    for filename, data in files:
        try:
            arrays.append(predictor.decode(data))
        except ImageError as error:
            raise RequestError(IMAGE_ERROR_STATUS.get(error.code, 400), error.code, str(error), filename) from None
    return arrays


def model_identity(predictor) -> dict:
    """How every answer names the model that made it."""
    return {"name": predictor.name, "version": predictor.version}


def model_view(array) -> str:
    """32x32 pixels (what the model saw, or a map drawn from them) as a PNG data URL: re-encoded
    here, never the uploaded bytes."""
    return "data:image/png;base64," + base64.b64encode(encode_image(array)).decode("ascii")


def classify_request(fields=("image",), max_files: int | None = None):
    """Classify the photos of the current request in one batch (shared with concurrent requests
    of this worker when micro-batching is on).

    Returns (predictor, [(filename, array, result)]) in upload order, or raises RequestError
    without predicting anything when any file is missing, refused or unreadable.
    """
    predictor, files = current_predictor(), []
    limit = max_files or int(current_app.config["MAX_FILES"])

    def receive() -> list:
        # the body is read and parsed here, inside the batcher's decode step, so that a batch
        # leader already waits for this request while its photos are still being received
        files.extend(collect_files(fields))
        check_count(files, limit)
        return decode_all(predictor, files)

    arrays, results = batcher(current_app).classify(predictor, receive)
    count_predictions(results)
    traffic.recorder(current_site()).count(version_id_of(predictor), predictor.card, results)  # memory only
    return predictor, [(name, array, result) for (name, _), array, result in zip(files, arrays, results)]
