"""The management JSON API under /api/v1/admin/, authorised by `Authorization: Bearer <ADMIN_TOKEN>`
(CSRF-exempt: a cookie alone never authorises a call here)."""

from flask import Blueprint, jsonify, request

from webapp import exports, feedback, jobs, versions
from webapp.auth import token_required
from webapp.errors import AppError
from webapp.params import row_id_arg
from webapp.serving import current_predictor

bp = Blueprint("admin_api", __name__, url_prefix="/api/v1/admin")


@bp.post("/jobs")
@token_required
def start_job():
    data = request.get_json(silent=True) if request.content_length else {}
    if data is None:
        raise AppError(400, "bad_request", "the request body must be JSON")
    return jsonify(jobs.start(data)), 202


@bp.get("/jobs")
@token_required
def list_jobs():
    return jsonify({"jobs": jobs.list_jobs()})


@bp.get("/jobs/<row_id:job_id>")
@token_required
def get_job(job_id):
    return jsonify(jobs.get(job_id, since=row_id_arg("since")))


@bp.post("/jobs/<row_id:job_id>/cancel")
@token_required
def cancel_job(job_id):
    return jsonify(jobs.cancel(job_id)), 202


@bp.get("/versions")
@token_required
def list_versions():
    model_store = versions.store()
    return jsonify({"versions": model_store.list(), "active": model_store.active_id()})


@bp.post("/versions/<version_id>/activate")
@token_required
def activate_version(version_id):
    return jsonify(versions.store().activate(version_id))


@bp.get("/feedback")
@token_required
def list_feedback():
    # an empty ?status= is a status that does not exist, not "any status" (the document's enum)
    return jsonify({"items": feedback.list_items(request.args.get("status"), request.args.get("label") or None)})


@bp.post("/feedback/<row_id:item_id>")
@token_required
def review_feedback(item_id):
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AppError(400, "bad_request", 'the request body must be a JSON object like {"status": "accepted"}')
    return jsonify(feedback.review([item_id], data.get("status"), current_predictor().classes, data.get("label"))[0])


@bp.delete("/feedback/<row_id:item_id>")
@token_required
def delete_feedback(item_id):
    feedback.delete([item_id])
    return "", 204


@bp.get("/versions/<version_id>/export/<fmt>")
@token_required
def download_export(version_id, fmt):
    return exports.download(version_id, fmt)
