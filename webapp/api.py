"""Placeholder blueprint, replaced by its page group's implementation."""

from flask import Blueprint

bp = Blueprint("api", __name__)
