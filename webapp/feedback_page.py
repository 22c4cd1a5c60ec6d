"""The feedback form of the result page for browsers without JavaScript (the upload page's
script sends feedback to /api/v1/feedback instead): the same checks, a page as the answer."""

from flask import Blueprint, render_template

from webapp import feedback_intake

bp = Blueprint("feedback_page", __name__)


@bp.post("/feedback")
def send():
    _, created = feedback_intake.submit()
    return render_template("feedback_sent.html", created=created), 201 if created else 200
