"""The upload page: classify photos in the browser (static/upload.js calls the JSON API), or with a
plain form POST that renders the result page, for browsers without JavaScript."""

import base64
import io

from flask import Blueprint, current_app, render_template
from PIL import Image

from webapp.request_photos import classify_request, model_identity
from webapp.serving import current_predictor

bp = Blueprint("upload", __name__)


def model_view(array) -> str:
    """The 32x32 pixels the model saw, as a PNG data URL: re-encoded, never the uploaded bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@bp.get("/")
def index():
    predictor = current_predictor()
    evaluation = predictor.card.get("evaluation") or {}
    config = current_app.config
    # a card without a novelty threshold (older versions) recognises everything: say so honestly
    return render_template("index.html", model=model_identity(predictor), classes=predictor.classes,
                           knows_none_of_these=predictor.novelty_threshold is not None,
                           accuracy=evaluation.get("accuracy"), eval_images=evaluation.get("images"),
                           max_files=config["MAX_FILES"], max_upload_mb=config["MAX_UPLOAD_MB"],
                           max_bytes=config["MAX_CONTENT_LENGTH"])


@bp.post("/")
def classify():
    predictor, items = classify_request(("image",))
    results = [{"filename": name, "preview": model_view(array), "result": result}
               for name, array, result in items]
    return render_template("result.html", model=model_identity(predictor), results=results,
                           classes=predictor.classes)
