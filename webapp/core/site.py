"""The lifecycle's `Site` of the app answering the current request: its instance folder and its
settings, passed explicitly to webapp.lifecycle, which never reads Flask's `current_app`."""

from flask import current_app

from webapp.lifecycle.site import Site


def current_site() -> Site:
    return Site.of(current_app)
