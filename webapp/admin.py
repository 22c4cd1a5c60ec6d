"""Placeholder blueprint, replaced by its page group's implementation."""

from flask import Blueprint

bp = Blueprint("admin", __name__)
