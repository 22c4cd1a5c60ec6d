"""JSON API: predictions (own shape and TorchServe's), explanations, the active model, health and
readiness, and the OpenAPI document describing the whole API, feedback and admin routes included
(webapp/predict/openapi.json)."""

import json
from pathlib import Path

import numpy as np
from flask import Blueprint, current_app, jsonify, request

from ml.predict.explain import METHOD, heat_overlay, saliency_map
from webapp.core.graceful import draining
from webapp.predict.request_photos import RequestError, classify_request, model_identity, model_view
from webapp.predict.serving import current_predictor, is_ready, serving_status

bp = Blueprint("api", __name__)

OPENAPI = json.loads((Path(__file__).with_name("openapi.json")).read_text())

@bp.post("/api/v1/predict")
def predict():
    predictor, items = classify_request(("image",))
    return jsonify(model=model_identity(predictor),
                   predictions=[{"filename": name, **result} for name, _, result in items])


def requested_label():
    """The multipart field, else the query string (a raw-body upload has no fields, like its
    filename); None when absent. An empty one is refused like any unknown class."""
    form = request.form if request.mimetype == "multipart/form-data" else {}
    return form.get("label", request.args.get("label"))


def checked_label(predictor, label: str) -> str:
    if label not in predictor.classes:
        raise RequestError(400, "unknown_label", f"'{label[:50]}' is not one of the model's classes: "
                                                 + ", ".join(predictor.classes))
    return label


@bp.post("/api/v1/explain")
def explain():
    """One photo's prediction and which pixels of its 32x32 input decided it (or `label`)."""
    wanted = requested_label()
    predictor, items = classify_request(("image",), max_files=1)
    filename, array, result = items[0]
    label = checked_label(predictor, result["label"] if wanted is None else wanted)
    saliency = saliency_map(predictor, array, label, int(current_app.config["EXPLAIN_STEPS"]))
    # the overlay is a PNG drawn here from the map, never anything the client sent
    return jsonify(model=model_identity(predictor), prediction={"filename": filename, **result}, label=label,
                   method=METHOD, saliency=np.round(saliency, 4).tolist(), overlay=model_view(heat_overlay(saliency)))


@bp.route("/predictions/<model_name>", methods=["POST", "PUT"])  # PUT: `curl -T photo.jpg`
def torchserve_predict(model_name):
    """TorchServe's inference API: one image (raw body, or field `data`/`body`) -> {label: probability}."""
    active = current_predictor().name
    if model_name != active:
        raise RequestError(404, "model_not_found", f"there is no model '{model_name}'; this server serves '{active}'")
    _, items = classify_request(("data", "body"), max_files=1)
    scores = {entry["label"]: entry["probability"] for entry in items[0][2]["top"]}
    # json.dumps keeps the ranking order that jsonify would sort away
    return current_app.response_class(json.dumps(scores), mimetype="application/json")


@bp.get("/api/v1/model")
def model():
    predictor = current_predictor()
    card = dict(predictor.card)
    evaluation = card.pop("evaluation", None)
    return jsonify(**model_identity(predictor), classes=predictor.classes, card=card, evaluation=evaluation)


@bp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz():
    if draining():  # the server is stopping: a load balancer should send elsewhere from now on
        return jsonify(status="draining"), 503
    if not is_ready(current_app):
        return jsonify(status="loading"), 503
    body = {"status": "ready", "model": model_identity(current_predictor())}
    unreachable = serving_status()["unreachable"]
    if unreachable:  # still 200: this worker answers, with the version it has; the operator should know
        body["warning"] = f"{unreachable}; serving {body['model']['version']}, the version this worker has"
    return jsonify(body)


@bp.get("/ping")
def ping():
    """TorchServe's health check."""
    ready = is_ready(current_app)
    return jsonify(status="Healthy" if ready else "Unhealthy"), 200 if ready else 503


@bp.get("/api/openapi.json")
def openapi():
    return jsonify(OPENAPI)
