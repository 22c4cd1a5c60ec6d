"""The feedback form of the result page for browsers without JavaScript (the upload page's
script sends feedback to /api/v1/feedback instead): the same checks, a page as the answer."""

from flask import Blueprint, render_template

from webapp.feedback import intake

bp = Blueprint("feedback_page", __name__)


@bp.post("/feedback")
def send():
    _, created = intake.submit()
    return render_template("feedback/sent.html", created=created), 201 if created else 200
