"""Placeholder blueprint, replaced by its page group's implementation."""

from flask import Blueprint

bp = Blueprint("upload", __name__)


@bp.get("/")
def index():
    return "CIFAR-10 classifier: the upload page is on its way."
