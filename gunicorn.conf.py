"""gunicorn settings (`make serve`, or `gunicorn -c gunicorn.conf.py wsgi:app`).

No preload: each worker imports the app after fork and loads the model once in
`post_worker_init`, before it takes requests (PyTorch and fork do not mix). Workers times torch
threads never exceed the CPU cores. Environment: PORT (8000), WEB_WORKERS, WEB_THREADS (request
threads per worker, 8), TORCH_THREADS (1), WEB_TIMEOUT (60 s), WEB_MAX_REQUESTS (0: a worker is
never recycled; N: after N to 1.2 N requests), WEB_DRAIN_S (5 s: on TERM, /readyz answers 503 this
long before the listener closes), WEB_RELOAD_TIMEOUT_S (120 s: on HUP the old workers serve until
the new ones are ready, at most this long).
Prometheus samples of all workers meet in PROMETHEUS_MULTIPROC_DIR (default <instance>/prometheus).

Reloads, recycling and stops lose no request: webapp/core/graceful.py says how, docs/operations.md how
to roll out a release with them.
"""

import os

from webapp.core import graceful  # gunicorn only: Flask and torch stay out of the master
from webapp.settings import instance_path


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def worker_plan(cores: int, torch_threads: int, requested_workers: int | None) -> tuple:
    """(workers, torch threads per worker) with workers * threads <= cores, and at least one worker."""
    torch_threads = max(1, min(torch_threads, cores))
    most = max(1, cores // torch_threads)
    return max(1, min(requested_workers or most, most)), torch_threads


def env_int(name: str):
    value = os.environ.get(name, "").strip()
    return int(value) if value else None


workers, torch_threads = worker_plan(available_cores(), env_int("TORCH_THREADS") or 1, env_int("WEB_WORKERS"))
os.environ["TORCH_THREADS"] = str(torch_threads)  # read by the app in each worker (webapp settings)

# loopback unless WEB_HOST says (0.0.0.0, or one address, for a web host behind a load balancer)
bind = f"{os.environ.get('WEB_HOST') or '127.0.0.1'}:{os.environ.get('PORT') or 8000}"
# gunicorn's gthread worker (request threads share the worker's one model; forward passes take a
# lock) with a stop that answers every request it already received (webapp/core/graceful.py)
worker_class = "webapp.core.graceful.DrainingThreadWorker"
threads = env_int("WEB_THREADS") or 8  # 8, not 4: more requests in flight, larger micro-batches
timeout = env_int("WEB_TIMEOUT") or 60
graceful_timeout = 30
MAX_REQUESTS_DEFAULT = 0
max_requests = MAX_REQUESTS_DEFAULT if env_int("WEB_MAX_REQUESTS") is None else env_int("WEB_MAX_REQUESTS")
max_requests_jitter = max_requests // 5  # staggered, so workers do not all restart at once
DRAIN_S = float(os.environ.get("WEB_DRAIN_S") or 5)
RELOAD_TIMEOUT_S = float(os.environ.get("WEB_RELOAD_TIMEOUT_S") or 120)
preload_app = False
accesslog = "-"
errorlog = "-"


RUN_FOLDER = os.path.join(instance_path(), "run")  # the workers' ready markers (webapp/core/graceful.py)


def on_starting(server):
    """Before any worker exists: an empty folder for the workers' Prometheus samples. Set here, in
    the master, so every worker imports prometheus_client already in multiprocess mode."""
    folder = os.path.join(instance_path(), "prometheus")
    folder = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", folder)
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name.endswith(".db"):  # samples of a previous server
            os.remove(os.path.join(folder, name))
    graceful.start_master(RUN_FOLDER)


def when_ready(server):
    """Reloads keep the old workers until the new are ready; TERM drains first (webapp/core/graceful.py)."""
    graceful.install_master(server, DRAIN_S, RELOAD_TIMEOUT_S)


def on_reload(server):
    graceful.on_reload(server)


def post_fork(server, worker):
    """One malloc arena per worker (glibc): a worker's request threads take turns running forward
    passes, and with an arena per thread each kept its own high-water mark, so memory grew with
    the thread count. The GIL and the model lock serialise them anyway: no speed is lost."""
    from ml.train.libc import M_ARENA_MAX, glibc
    libc = glibc()
    if libc is not None:
        libc.mallopt(M_ARENA_MAX, 1)


TRIM_EVERY_S = 2.0  # scripts/soak.py waits longer than this before it reads a worker's memory
_last_trim = [0.0]


def post_request(worker, req, environ, resp):
    """At most every 2 s, hand freed heap pages back to the OS: decoding a 12 MP photo or loading a
    new model version frees hundreds of MB that glibc would otherwise keep, so RSS tracks what a
    worker really holds instead of its high-water mark."""
    import time
    now = time.monotonic()
    if now - _last_trim[0] >= TRIM_EVERY_S:
        _last_trim[0] = now
        from ml.train.libc import glibc
        libc = glibc()
        if libc is not None:
            libc.malloc_trim(0)


def child_exit(server, worker):
    """Runs in the master's SIGCHLD handler: nothing there may fail or import (webapp/core/graceful.py)."""
    graceful.worker_gone(server, worker.pid)


def post_worker_init(worker):
    """Load the model in this worker now, so the first request does not wait and /readyz turns 200;
    only then may a reload stop the worker this one replaces."""
    from webapp.predict.serving import warm_up
    warm_up(worker.wsgi)
    graceful.mark_ready(RUN_FOLDER, worker.pid)
