"""Admin pages under /admin (session login, CSRF on every form): the job list and model versions
(with their ONNX and TorchScript downloads), the new-job form (optionally fine-tuning a version,
with reviewed user photos), the live job page and the JSON it polls."""

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for

from webapp.admin import exports
from webapp.core import auth
from webapp.core.errors import status_of
from webapp.core.params import row_id_arg
from webapp.core.site import current_site
from webapp.lifecycle import feedback, jobs, versions
from webapp.predict.serving import serving_status

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.after_request
def _no_store(response):
    response.headers["Cache-Control"] = "no-store"  # admin pages and job state are never cached
    return response


@bp.route("/login", methods=["GET", "POST"])
def login():
    target = auth.safe_next(request.values.get("next"))
    if request.method == "GET":
        return render_template("admin/login.html", next=target)
    wait = auth.throttle_wait()
    if wait:
        response = render_template("admin/login.html", next=target,
                                   error=f"Too many failed attempts. Try again in {wait} seconds.")
        return response, 429, {"Retry-After": str(wait)}
    if not auth.check_password(request.form.get("password", "")):
        auth.record_failure()
        return render_template("admin/login.html", next=target, error="Wrong password."), 401
    auth.clear_failures()
    auth.log_in()
    return redirect(target)


@bp.post("/logout")
def logout():
    auth.log_out()
    return redirect(url_for("admin.login"))


@bp.get("")
@auth.login_required
def home():
    site = current_site()
    model_store = versions.store(site)
    return render_template("admin/home.html", jobs=jobs.list_jobs(site), versions=model_store.list(),
                           active=model_store.active_id(), serving=serving_status())


@bp.get("/jobs/new")
@auth.login_required
def new_job():
    return job_form({}, None)


def job_form(form, error):
    """The new-job form, with what was entered and why it was refused."""
    site = current_site()
    return render_template("admin/job_new.html", sources=jobs.data_sources(site), presets=jobs.preset_summaries(),
                           versions=versions.store(site).list(), feedback_counts=feedback.accepted_counts(site),
                           form=form, error=error, running=jobs.active_job(site), queue_mode=jobs.queue_mode(site))


@bp.post("/jobs")
@auth.login_required
def start_job():
    # an empty field keeps the preset's value, as an absent one does in the JSON API
    form = {k: v.strip() for k, v in request.form.items() if k != "csrf_token" and v.strip()}
    try:
        job = jobs.start(current_site(), form)
    except jobs.JobError as error:
        return job_form(form, str(error)), status_of(error)
    return redirect(url_for("admin.job_page", job_id=job["id"]))


@bp.get("/jobs/<row_id:job_id>")
@auth.login_required
def job_page(job_id):
    return render_template("admin/job.html", job=jobs.get(current_site(), job_id))


@bp.get("/jobs/<row_id:job_id>.json")
@auth.login_required
def job_json(job_id):
    """What the job page polls: state, metrics after `since`, log tail (session cookie auth)."""
    return jsonify(jobs.get(current_site(), job_id, since=row_id_arg("since")))


@bp.post("/jobs/<row_id:job_id>/cancel")
@auth.login_required
def cancel_job(job_id):
    try:
        jobs.cancel(current_site(), job_id)
        flash(f"Job {job_id} is stopping.", "info")
    except jobs.JobError as error:
        flash(str(error), "error")
    return redirect(url_for("admin.job_page", job_id=job_id))


@bp.post("/jobs/<row_id:job_id>/resume")
@auth.login_required
def resume_job(job_id):
    try:
        job = jobs.start(current_site(), {"resume": job_id})
    except jobs.JobError as error:
        flash(str(error), "error")
        return redirect(url_for("admin.job_page", job_id=job_id))
    return redirect(url_for("admin.job_page", job_id=job["id"]))


@bp.post("/versions/<version_id>/activate")
@auth.login_required
def activate_version(version_id):
    try:
        versions.store(current_site()).activate(version_id)
        flash(f"Version {version_id} is now active; every worker serves it within seconds.", "info")
    except versions.VersionError as error:
        flash(str(error), "error")
    return redirect(url_for("admin.home"))


@bp.get("/versions/<version_id>/export/<fmt>")
@auth.login_required
def download_export(version_id, fmt):
    """The version as ONNX or TorchScript, with its card embedded (ml.export)."""
    return exports.download(version_id, fmt)
