"""The accuracy dashboard (`/dashboard`): evaluation, training history, calibration, misclassified
images, dataset overview and model card of the active model or any stored version.

Everything comes from the model folder's card.json and gallery/*.png; weights are never loaded
here. Parts a card lacks (or holds in a shape we cannot read) are shown as "not recorded".
"""

import logging
from pathlib import Path

from flask import Blueprint, abort, current_app, render_template, request, send_file

from ml.nets.modelfile import ModelFileError, read_card
from webapp.core.formatting import finite, pct
from webapp.core.site import current_site
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


@bp.get("/dashboard")
def index():
    models = available_models()
    model = find_model(models, request.args.get("version"))
    try:
        # the card with what was measured on users' photos after the version was stored
        view = dashboard_view(versions.store(current_site()).noted(model.id, read_card(model.path)), model)
    except ModelFileError as error:
        log.warning("dashboard: %s", error)
        view = None
    return render_template("dashboard/index.html", models=models, model=model, view=view,
                           novelty_override=current_app.config.get("NOVELTY_THRESHOLD"))
