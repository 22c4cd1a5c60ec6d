"""Placeholder blueprint, replaced by its page group's implementation."""

from flask import Blueprint

bp = Blueprint("admin_api", __name__)
