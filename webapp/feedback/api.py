"""Feedback's JSON routes (CSRF-exempt): `POST /api/v1/feedback`, a user's correction of a
prediction with the photo, and the review routes of the management API under
/api/v1/admin/feedback, authorised by `Authorization: Bearer <ADMIN_TOKEN>`."""

from flask import Blueprint, jsonify, request

from webapp.core.auth import token_required
from webapp.core.errors import AppError
from webapp.core.site import current_site
from webapp.feedback import intake
from webapp.lifecycle import feedback
from webapp.predict.serving import current_predictor

bp = Blueprint("feedback_api", __name__)


@bp.post("/api/v1/feedback")
def send_feedback():
    """A user's correction of a prediction, with the photo: stored (re-encoded) for review."""
    item_id, created = intake.submit()
    return jsonify(id=item_id, duplicate=not created), 201 if created else 200


@bp.get("/api/v1/admin/feedback")
@token_required
def list_feedback():
    # an empty ?status= is a status that does not exist, not "any status" (the document's enum)
    items = feedback.list_items(current_site(), request.args.get("status"), request.args.get("label") or None)
    return jsonify({"items": items})


@bp.post("/api/v1/admin/feedback/<row_id:item_id>")
@token_required
def review_feedback(item_id):
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise AppError(400, "bad_request", 'the request body must be a JSON object like {"status": "accepted"}')
    reviewed = feedback.review(current_site(), [item_id], data.get("status"), current_predictor().classes,
                               data.get("label"))
    return jsonify(reviewed[0])


@bp.delete("/api/v1/admin/feedback/<row_id:item_id>")
@token_required
def delete_feedback(item_id):
    feedback.delete(current_site(), [item_id])
    return "", 204
