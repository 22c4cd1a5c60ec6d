"""The web app: `create_app(test_config=None)` builds it from the settings (webapp/settings.py),
every shared piece's `init_app` and one blueprint package per feature.

Layers, each importing only those below it: `ml` <- `settings` <- `lifecycle` (no Flask: the
database, jobs, the model store and its gate, the feedback store; the job runner uses it too) <-
`core` (errors, security, metrics, rate limits, credentials, formatting, URL parameters, the
gunicorn worker) <- the feature packages `predict`, `feedback`, `dashboard`, `admin` <- this file.
"""

import os

from webapp.settings import PROJECT_ROOT, instance_path, load_settings

__all__ = ["create_app", "instance_path"]


def create_app(test_config=None):
    # Imported here, not at the top: gunicorn's master imports this package for instance_path(),
    # and torch and prometheus_client must first be imported in the workers, after fork; the job
    # runner imports webapp.lifecycle, which must not bring in Flask.
    from flask import Flask
    from flask_wtf.csrf import CSRFProtect

    from webapp import admin, dashboard, feedback, predict
    from webapp.core import auth, errors, formatting, metrics, params, scrape, security
    from webapp.predict import batching, request_photos

    app = Flask(__name__, instance_path=instance_path(test_config), instance_relative_config=True,
                template_folder=str(PROJECT_ROOT / "templates"), static_folder=str(PROJECT_ROOT / "static"))
    os.makedirs(app.instance_path, exist_ok=True)
    load_settings(app, test_config)
    app.request_class = request_photos.InMemoryRequest  # uploads are never spooled to disk

    params.init_app(app)  # before the blueprints: their rules use its converter
    csrf = CSRFProtect(app)  # every HTML form POST needs a token; JSON APIs are exempt below
    for package in (predict, feedback, dashboard, admin):
        for blueprint in package.PAGES:
            app.register_blueprint(blueprint)
        for blueprint in package.APIS:  # authorised by bearer token or stateless, not cookies
            csrf.exempt(blueprint)
            app.register_blueprint(blueprint)
    errors.init_app(app)
    security.init_app(app)
    auth.init_app(app)
    metrics.init_app(app)
    scrape.init_app(app)
    batching.init_app(app)
    formatting.init_app(app)
    return app
