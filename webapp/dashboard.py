"""Placeholder blueprint, replaced by its page group's implementation."""

from flask import Blueprint

bp = Blueprint("dashboard", __name__)
