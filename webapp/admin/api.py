"""The management JSON API under /api/v1/admin/, authorised by `Authorization: Bearer <ADMIN_TOKEN>`
(CSRF-exempt: a cookie alone never authorises a call here). Its feedback routes are
webapp.feedback.api's."""

from flask import Blueprint, jsonify, request

from webapp.admin import exports
from webapp.core.auth import token_required
from webapp.core.errors import AppError
from webapp.core.params import row_id_arg
from webapp.core.site import current_site
from webapp.lifecycle import jobs, versions

bp = Blueprint("admin_api", __name__, url_prefix="/api/v1/admin")


@bp.post("/jobs")
@token_required
def start_job():
    data = request.get_json(silent=True) if request.content_length else {}
    if data is None:
        raise AppError(400, "bad_request", "the request body must be JSON")
    return jsonify(jobs.start(current_site(), data)), 202


@bp.get("/jobs")
@token_required
def list_jobs():
    return jsonify({"jobs": jobs.list_jobs(current_site())})


@bp.get("/jobs/<row_id:job_id>")
@token_required
def get_job(job_id):
    return jsonify(jobs.get(current_site(), job_id, since=row_id_arg("since")))


@bp.post("/jobs/<row_id:job_id>/cancel")
@token_required
def cancel_job(job_id):
    return jsonify(jobs.cancel(current_site(), job_id)), 202


@bp.get("/versions")
@token_required
def list_versions():
    model_store = versions.store(current_site())
    return jsonify({"versions": model_store.list(), "active": model_store.active_id()})


@bp.post("/versions/<version_id>/activate")
@token_required
def activate_version(version_id):
    return jsonify(versions.store(current_site()).activate(version_id))


@bp.get("/versions/<version_id>/export/<fmt>")
@token_required
def download_export(version_id, fmt):
    return exports.download(version_id, fmt)
