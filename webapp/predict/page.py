"""The upload page: classify photos in the browser (static/upload.js calls the JSON API), or with a
plain form POST that renders the result page, for browsers without JavaScript."""

from flask import Blueprint, current_app, render_template

from webapp.predict.request_photos import classify_request, model_identity, model_view
from webapp.predict.serving import current_predictor

bp = Blueprint("upload", __name__)


@bp.get("/")
def index():
    predictor = current_predictor()
    evaluation = predictor.card.get("evaluation") or {}
    config = current_app.config
    # a card without a novelty threshold (older versions) recognises everything: say so honestly
    return render_template("predict/index.html", model=model_identity(predictor), classes=predictor.classes,
                           knows_none_of_these=predictor.novelty_threshold is not None,
                           accuracy=evaluation.get("accuracy"), eval_images=evaluation.get("images"),
                           max_files=config["MAX_FILES"], max_upload_mb=config["MAX_UPLOAD_MB"],
                           max_bytes=config["MAX_CONTENT_LENGTH"])


@bp.post("/")
def classify():
    predictor, items = classify_request(("image",))
    results = [{"filename": name, "preview": model_view(array), "result": result}
               for name, array, result in items]
    return render_template("predict/result.html", model=model_identity(predictor), results=results,
                           classes=predictor.classes)
