"""The accuracy dashboard (`/dashboard`): evaluation, training history, calibration, misclassified
images, dataset overview and model card of the active model or any stored version, and what users
sent it (live traffic, with the drift banner; also as JSON at `/api/v1/traffic`).

Everything but live traffic comes from the model folder's card.json and gallery/*.png; weights are
never loaded here. Parts a card lacks (or holds in a shape we cannot read) are shown as "not
recorded". Live traffic comes from the shared database (webapp/lifecycle/traffic.py).
"""

import logging
from pathlib import Path

from flask import Blueprint, abort, current_app, jsonify, render_template, request, send_file
from sqlalchemy.exc import SQLAlchemyError

from ml.nets.modelfile import ModelFileError, read_card
from webapp.core.formatting import finite, pct
from webapp.core.site import current_site
from webapp.dashboard import traffic
from webapp.dashboard.sections import ModelVersion, dashboard_view, gallery_file
from webapp.lifecycle import versions

bp = Blueprint("dashboard", __name__)
log = logging.getLogger(__name__)


def available_models() -> list:
    """Every model version of the store (the shipped one included) as (id, label, path, active)."""
    return [ModelVersion(str(v["id"]), _stored_label(v), Path(v["path"]), bool(v["active"]))
            for v in versions.list_versions(current_site())]


def _stored_label(item: dict) -> str:
    """"<id> · <accuracy> · <created>", with "(active)" for the active version."""
    parts = [str(item["id"])]
    accuracy = (item.get("metrics") or {}).get("accuracy")
    if finite(accuracy) is not None:
        parts.append(f"{pct(accuracy)} accurate")
    users = (item.get("user_photos") or {}).get("accuracy")
    if finite(users) is not None:
        parts.append(f"{pct(users)} on users' photos")
    if item.get("created"):
        parts.append(str(item["created"])[:16].replace("T", " "))
    return " · ".join(parts) + (" (active)" if item["active"] else "")


def find_model(models: list, version_id) -> ModelVersion:
    """The version asked for (the active one when none is), or a 404."""
    if version_id is None:
        return next((m for m in models if m.active), models[0])
    match = next((m for m in models if m.id == version_id), None)
    if match is None:
        abort(404, description="There is no model version with that id.")
    return match


@bp.get("/dashboard/gallery/<version>/<name>.png")
def gallery(version, name):
    model = find_model(available_models(), version)
    path = gallery_file(model.path, name)
    if path is None:
        abort(404, description="No such gallery image.")
    response = send_file(path, mimetype="image/png", max_age=300)
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "default-src 'none'"
    return response


def live_traffic(model: ModelVersion, card: dict) -> dict:
    """The version's live traffic (webapp.dashboard.traffic), read from the shared database."""
    return traffic.live_traffic(current_site(), model.id, card, current_app.config.get("NOVELTY_THRESHOLD"))


def traffic_view(model: ModelVersion, card: dict):
    """The Live traffic section: the figures and their charts; None when the database cannot be read."""
    try:
        live = live_traffic(model, card)
    except SQLAlchemyError as error:
        log.warning("dashboard: live traffic unreadable (%s)", error.__class__.__name__)
        return None
    override = current_app.config.get("NOVELTY_THRESHOLD")
    threshold = override if override is not None else (card.get("novelty") or {}).get("threshold")
    return {**live, "classes_chart": traffic.classes_chart(live),
            "novelty_chart": traffic.novelty_chart(live, traffic.DRIFT_WINDOW, threshold)}


@bp.get("/dashboard")
def index():
    models = available_models()
    model = find_model(models, request.args.get("version"))
    try:
        # the card with what was measured on users' photos after the version was stored
        card = versions.store(current_site()).noted(model.id, read_card(model.path))
        view = dashboard_view(card, model)
    except ModelFileError as error:
        log.warning("dashboard: %s", error)
        card, view = None, None
    return render_template("dashboard/index.html", models=models, model=model, view=view,
                           traffic=traffic_view(model, card) if card is not None else None,
                           novelty_override=current_app.config.get("NOVELTY_THRESHOLD"))


@bp.get("/api/v1/traffic")
def traffic_api():
    """The dashboard's live traffic as JSON, for the version asked for (the active one by default)."""
    model = find_model(available_models(), request.args.get("version"))
    try:
        card = read_card(model.path)
    except ModelFileError as error:
        abort(404, description=f"The model card of version {model.id} cannot be read: {error}")
    return jsonify(live_traffic(model, card))
