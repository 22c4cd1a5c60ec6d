"""The settings table, and where the instance folder is: read by the app factory, by gunicorn's
master (which must not import Flask's app or torch) and by the lifecycle alike. Imports nothing of
webapp and no Flask.

Settings: the SETTINGS table's defaults, then `<instance>/config.py`, then environment variables,
then `test_config` (`settings_for`, which the web app, the job runner and the training worker all
read). Runtime state (secret key, model store, database, logs) lives in the instance folder, which
`instance_path()` names for the app and for gunicorn's master alike.

Cluster mode (any of DATABASE_URL, REDIS_URL, MODEL_STORE_URL set): several hosts share one
database, queue and store, so a secret generated on each host would differ between them; the app
refuses to start unless SECRET_KEY and ADMIN_TOKEN or ADMIN_PASSWORD are given (`check_cluster`).
"""

import os
import secrets
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def flag(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes")


# name, default, type of its environment variable
SETTINGS = (
    # beyond one host (docs/deploy.md); unset: everything in the instance folder, as on one host
    ("DATABASE_URL", None, str),           # postgresql+psycopg://user@host/db; unset: <instance>/admin.sqlite3
    ("REDIS_URL", None, str),              # redis://host:6379/0: jobs queued for workers; unset: run locally
    ("MODEL_STORE_URL", None, str),        # s3://bucket/prefix; unset: <instance>/store
    ("SECRET_KEY", None, str),             # unset: a random key kept in the instance folder
    ("MODEL_DIR", str(PROJECT_ROOT / "models" / "default"), str),  # the shipped model
    ("MAX_UPLOAD_MB", 10, float),          # request body limit
    ("MAX_FILES", 16, int),                # images per request
    ("MAX_PIXELS", 40_000_000, int),       # per image, checked from the header before decoding
    ("NOVELTY_THRESHOLD", None, float),    # "none of these" above this novelty; unset: the model card's
    ("TORCH_THREADS", 1, int),             # per gunicorn worker
    ("SESSION_COOKIE_SECURE", False, flag),  # set true behind HTTPS
    # proxies in front whose X-Forwarded-For/-Proto are believed (nginx in front: 1); 0 ignores
    # them, so a client cannot choose the address its login throttle and feedback limit count
    ("PROXY_HOPS", 0, int),
    ("ADMIN_PASSWORD", None, str),         # unset: generated at first start, printed once, only its hash kept
    ("ADMIN_TOKEN", None, str),            # bearer token of /api/v1/admin; same rule
    ("LOGIN_MAX_FAILURES", 5, int),        # failed admin logins per client within LOGIN_WINDOW_S
    ("LOGIN_WINDOW_S", 300, float),
    ("PROMOTION_MARGIN", 0.0, float),      # a new version goes live if its accuracy >= active's - margin
    ("FEEDBACK_MARGIN", 0.0, float),       # ... and its accuracy on users' photos >= active's - this
    ("UNRECOGNISED_MARGIN", 0.0, float),   # ... and its not-recognised rate on them <= active's + this
    ("FEEDBACK_MAX_SENDS", 30, int),       # feedback photos per client within FEEDBACK_WINDOW_S
    ("FEEDBACK_WINDOW_S", 3600, float),
    ("TRAIN_DATA", str(PROJECT_ROOT / "data"), str),  # the "default" data source of retraining jobs
    ("TRAIN_NPROC", 1, int),               # >1: jobs run under torchrun with this many processes
    ("TRAIN_THREADS", None, int),          # torch threads of a training job (unset: all cores)
    ("TRAIN_SUITE", True, flag),           # a job ends by measuring the robustness suite (minutes on a CPU)
    ("TRAIN_DEVICE", "auto", str),         # the device a job trains on: auto (CUDA if any, else CPU), cpu, cuda
    ("WORKER_NAME", None, str),            # the host a job runs on, as its page says; unset: the host name
    ("JOB_HEARTBEAT_S", 5.0, float),       # a running job's worker writes its heartbeat this often
    ("JOB_LOST_S", 60.0, float),           # queue mode: no heartbeat for this long -> failed "worker lost"
    # a job over several workers (`nodes` above 1): the address the other workers reach this one at
    # for its rendezvous (unset: the address this host reaches the queue's host from), the port it
    # listens on there (0: a free one at each job), and how long it waits for the other nodes
    ("WORKER_ADDRESS", None, str),
    ("WORKER_RDZV_PORT", 0, int),
    ("JOB_NODES_WAIT_S", 300.0, float),
    # micro-batching: wait up to this for this worker's requests still being received or decoded
    # (never for requests not yet sent); 0: off. 30, not 5: 7 requests' reading and decoding on a
    # worker's one core take ~30 ms, and a shorter window closed batches early (docs/performance.md)
    ("BATCH_WINDOW_MS", 30, float),
    ("BATCH_MAX_IMAGES", 32, int),         # images per forward pass, at most
    ("EXPLAIN_STEPS", 16, int),            # integration steps of /api/v1/explain (time grows with them)
    # live traffic (docs/operations.md): each worker adds its counts into the database this often,
    # in seconds, and when it exits; the dashboard lags by at most this much
    ("TRAFFIC_FLUSH_S", 10.0, float),
)


def instance_path(test_config=None) -> str:
    """The instance folder: test_config's or the environment's INSTANCE_PATH, else ./instance."""
    configured = (test_config or {}).get("INSTANCE_PATH") or os.environ.get("INSTANCE_PATH")
    return os.path.abspath(configured or PROJECT_ROOT / "instance")


CLUSTER_URLS = ("DATABASE_URL", "REDIS_URL", "MODEL_STORE_URL")
SECRETS = ("SECRET_KEY", "ADMIN_PASSWORD", "ADMIN_TOKEN")  # never passed on to a job's environment


class SettingsError(RuntimeError):
    """Settings the app or a worker refuses to start with; the message says what to set."""


def settings_for(instance, test_config=None, environ=None) -> dict:
    """The settings of the instance folder `instance`: the table's defaults, then its config.py,
    then the environment's variables (`environ`, default os.environ), then `test_config`. Only
    upper-case names are taken from config.py and test_config, as Flask's config does."""
    environ = os.environ if environ is None else environ
    settings = {name: default for name, default, _ in SETTINGS}
    config_file = Path(instance) / "config.py"
    if config_file.is_file():
        namespace = {"__file__": str(config_file)}
        exec(compile(config_file.read_bytes(), str(config_file), "exec"), namespace)  # noqa: S102 - the operator's file
        settings.update({k: v for k, v in namespace.items() if k.isupper()})
    settings.update({name: convert(environ[name]) for name, _, convert in SETTINGS if environ.get(name)})
    settings.update({k: v for k, v in (test_config or {}).items() if k.isupper()})
    return settings


def cluster_mode(settings) -> bool:
    return any(settings.get(name) for name in CLUSTER_URLS)


def check_cluster(settings):
    """In cluster mode, SettingsError unless SECRET_KEY and ADMIN_TOKEN or ADMIN_PASSWORD are set."""
    if not cluster_mode(settings):
        return
    missing = [] if settings.get("SECRET_KEY") else ["SECRET_KEY"]
    if not (settings.get("ADMIN_TOKEN") or settings.get("ADMIN_PASSWORD")):
        missing.append("ADMIN_TOKEN (or ADMIN_PASSWORD)")
    if missing:
        urls = ", ".join(name for name in CLUSTER_URLS if settings.get(name))
        raise SettingsError(
            f"cluster mode ({urls} set): set {' and '.join(missing)} explicitly, the same on every host; "
            "a secret generated by each host would differ between them (docs/operations.md)")


def settings_environment(settings) -> dict:
    """name -> environment value of every setting but the secrets, as settings_for reads them back
    (None: the variable is to be removed); how a job process gets its web app's settings."""
    def text(value):
        return ("true" if value else "false") if isinstance(value, bool) else str(value)
    return {name: None if settings.get(name) is None else text(settings[name])
            for name, _, _ in SETTINGS if name not in SECRETS}


def load_settings(app, test_config):
    app.config.from_mapping(settings_for(app.instance_path, test_config))
    check_cluster(app.config)
    app.config["MAX_CONTENT_LENGTH"] = int(float(app.config["MAX_UPLOAD_MB"]) * 1024 * 1024)
    app.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax")
    if not app.config.get("SECRET_KEY"):
        app.config["SECRET_KEY"] = instance_secret(app.instance_path, "secret_key")


def instance_secret(instance, name: str) -> str:
    """A random secret kept in the instance folder (created once, mode 0600), never in the repo."""
    path = Path(instance) / name
    if not path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
        except FileExistsError:
            pass  # another worker created it first
    return path.read_text().strip()
