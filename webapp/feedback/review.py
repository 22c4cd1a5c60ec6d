"""The admin "Feedback" pages under /admin/feedback (session login, CSRF on every form): the
gallery of photos users sent, review actions on one or many, the photos themselves (only the
re-encoded copies, with headers that keep them inert) and the export of the accepted ones."""

import io

from flask import Blueprint, flash, redirect, render_template, request, send_file, url_for

from webapp.core import auth
from webapp.core.site import current_site
from webapp.lifecycle import feedback
from webapp.predict.serving import current_predictor

bp = Blueprint("admin_feedback", __name__, url_prefix="/admin/feedback")
ACTIONS = {"accept": "accepted", "reject": "rejected", "relabel": "accepted"}  # relabel: accept as the new label
PHOTO_TYPES = {"jpg": "image/jpeg", "png": "image/png"}


@bp.after_request
def _no_store(response):
    response.headers["Cache-Control"] = "no-store"  # users' photos are never kept in a cache
    return response


@bp.get("")
@auth.login_required
def gallery():
    status, label = request.args.get("status") or None, request.args.get("label") or None
    return render_template("feedback/review.html", items=feedback.list_items(current_site(), status, label),
                           classes=current_predictor().classes, none_label=feedback.NONE,
                           statuses=feedback.STATUSES, status=status, label=label)


@bp.post("/review")
@auth.login_required
def review():
    ids = request.form.getlist("ids", type=int)
    action = request.form.get("action")
    back = redirect(url_for("admin_feedback.gallery", status=request.form.get("status") or None,
                            label=request.form.get("label_filter") or None))
    if not ids:
        flash("Tick at least one photo first.", "error")
        return back
    if action == "delete":
        feedback.delete(current_site(), ids)
        flash(f"Deleted {len(ids)} photo(s) for good.", "info")
    elif action in ACTIONS:
        label = request.form.get("new_label") if action == "relabel" else None
        feedback.review(current_site(), ids, ACTIONS[action], current_predictor().classes, label)
        flash(f"{len(ids)} photo(s) {ACTIONS[action]}{' as ' + label if label else ''}.", "info")
    else:
        flash("Choose accept, relabel, reject or delete.", "error")
    return back


@bp.get("/<row_id:item_id>/photo.<any(jpg, png):kind>")
@auth.login_required
def photo(item_id, kind):
    """The re-encoded photo (jpg) or the 32x32 model input (png): files this server wrote, never
    the uploaded bytes, served as plain images that a browser will not sniff or run."""
    response = send_file(io.BytesIO(feedback.photo_bytes(current_site(), item_id, kind)), mimetype=PHOTO_TYPES[kind],
                         download_name=f"feedback-{item_id}.{kind}")
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


@bp.get("/export.zip")
@auth.login_required
def export():
    """The accepted photos as an image-folder dataset (<class>/<hash>.jpg) in one zip."""
    return send_file(io.BytesIO(feedback.export_zip(current_site())), mimetype="application/zip", as_attachment=True,
                     download_name="feedback-accepted.zip")
