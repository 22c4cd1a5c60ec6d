"""Flask application factory: `create_app(test_config=None)`.

Settings: defaults below, then `<instance>/config.py`, then environment variables, then
`test_config`. Runtime state (secret key, model store, database, logs) lives in the instance folder.
"""

import os
import secrets
from pathlib import Path

from flask import Flask

PROJECT_ROOT = Path(__file__).resolve().parent.parent

DEFAULTS = {
    "MODEL_DIR": str(PROJECT_ROOT / "models" / "default"),  # the shipped model
    "MAX_UPLOAD_MB": 10,            # request body limit
    "MAX_FILES": 16,                # images per request
    "MAX_PIXELS": 40_000_000,       # per image, checked from the header before decoding
    "TORCH_THREADS": 1,             # per gunicorn worker
    "PORT": 8000,
    "SESSION_COOKIE_SECURE": False,  # set true behind HTTPS
    "ADMIN_PASSWORD": None,         # unset: generated at first start, printed once, only its hash kept
    "ADMIN_TOKEN": None,            # bearer token of /api/v1/admin; same rule
    "LOGIN_MAX_FAILURES": 5,        # failed admin logins per client within LOGIN_WINDOW_S
    "LOGIN_WINDOW_S": 300,
    "PROMOTION_MARGIN": 0.0,        # a new version goes live if its accuracy >= active's - margin
    "TRAIN_DATA": str(PROJECT_ROOT / "data"),  # the "default" data source of retraining jobs
    "TRAIN_NPROC": 1,               # >1: jobs run under torchrun with this many processes
    "TRAIN_THREADS": None,          # torch threads of a training job (unset: all cores)
    "BATCH_WINDOW_MS": 5,           # micro-batching: wait up to this for requests being decoded; 0: off
    "BATCH_MAX_IMAGES": 32,         # images per forward pass, at most
}
ENV_SETTINGS = {"SECRET_KEY": str, "MODEL_DIR": str, "MAX_UPLOAD_MB": float, "MAX_FILES": int,
                "MAX_PIXELS": int, "TORCH_THREADS": int, "PORT": int,
                "SESSION_COOKIE_SECURE": lambda v: v.lower() in ("1", "true", "yes"),
                "ADMIN_PASSWORD": str, "ADMIN_TOKEN": str, "LOGIN_MAX_FAILURES": int, "LOGIN_WINDOW_S": float,
                "PROMOTION_MARGIN": float, "TRAIN_DATA": str, "TRAIN_NPROC": int, "TRAIN_THREADS": int,
                "BATCH_WINDOW_MS": float, "BATCH_MAX_IMAGES": int}


def load_settings(app, test_config):
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile("config.py", silent=True)
    for name, convert in ENV_SETTINGS.items():
        if os.environ.get(name):
            app.config[name] = convert(os.environ[name])
    if test_config:
        app.config.from_mapping(test_config)
    app.config["MAX_CONTENT_LENGTH"] = int(float(app.config["MAX_UPLOAD_MB"]) * 1024 * 1024)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = instance_secret(app, "secret_key")


def instance_secret(app, name: str) -> str:
    """A random secret kept in the instance folder (created once, mode 0600), never in the repo."""
    path = Path(app.instance_path) / name
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            pass  # another worker created it first
    return path.read_text().strip()


def create_app(test_config=None):
    instance_path = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("INSTANCE_PATH") \
        or str(PROJECT_ROOT / "instance")
    app = Flask(__name__, instance_path=os.path.abspath(instance_path),
                template_folder=str(PROJECT_ROOT / "templates"), static_folder=str(PROJECT_ROOT / "static"))
    os.makedirs(app.instance_path, exist_ok=True)
    load_settings(app, test_config)

    from flask_wtf.csrf import CSRFProtect
    from webapp import admin, admin_api, api, batching, dashboard, metrics, security, upload

    csrf = CSRFProtect(app)  # every HTML form POST needs a token; JSON APIs are exempt below
    for blueprint in (upload.bp, dashboard.bp, admin.bp):
        app.register_blueprint(blueprint)
    for blueprint in (api.bp, admin_api.bp):  # authorised by bearer token or stateless, not cookies
        csrf.exempt(blueprint)
        app.register_blueprint(blueprint)
    security.init_app(app)
    metrics.init_app(app)
    batching.init_app(app)
    return app
