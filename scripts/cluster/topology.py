"""The topology of a deployment beyond one machine (issue #25, docs/deploy.md), started for real:

    nginx (deploy/nginx.conf)  ->  web hosts (gunicorn -c gunicorn.conf.py wsgi:app)
    PostgreSQL + Redis + SeaweedFS S3 on one "db" host       training workers (python -m webapp.lifecycle.worker)

    layout = Layout.loopback(web=2, workers=1)          # `make cluster`: everything on 127.0.0.1
    layout = Layout.namespaces(hosts, db="a", web=["a", "b"], workers=["c", "d"], front=...)  # the test
    with Cluster(folder, layout) as cluster:
        cluster.url                 # nginx, in front of every web host
        cluster.web["b"].base       # one web host directly
        cluster.secrets             # SECRET_KEY, ADMIN_TOKEN, ADMIN_PASSWORD: random, made at start

Each role is a process group of its own (scripts/cluster/servers.py's life cycle: it starts when
made, returns once it answers, `.stop()` ends exactly what it started). A web host answers once its
`/readyz` is 200; a worker once RQ lists it. Every web host and worker gets the same settings
(DATABASE_URL, REDIS_URL, MODEL_STORE_URL=s3://bucket/prefix with the store's AWS_* variables, the
secrets) and its own instance folder, `<folder>/<host>/<role>/instance`; inside namespaces each
host also runs in a mount namespace where every other host's folder is an empty tmpfs, so a path of
one host that leaks into what another reads fails instead of passing through the shared disk.
`Cluster.stop()` stops what was started, in reverse order.

`python -m scripts.cluster` (`make cluster`) runs the loopback layout until Ctrl-C.
"""

import concurrent.futures
import importlib.util
import os
import secrets
import shlex
import signal
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scripts.cluster.servers import Postgres, Redis, SeaweedS3, ServerError, _Server

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
SHIPPED_MODEL = PROJECT_ROOT / "models" / "default"
TRAIN_DATA = PROJECT_ROOT / "data"
STORE_PREFIX = "photo"  # MODEL_STORE_URL = s3://<bucket>/photo
# what a process of the cluster must not inherit from the shell that starts it
NOT_INHERITED = ("DATABASE_URL", "REDIS_URL", "MODEL_STORE_URL", "SECRET_KEY", "ADMIN_TOKEN", "ADMIN_PASSWORD",
                 "INSTANCE_PATH", "PROMETHEUS_MULTIPROC_DIR", "WEB_HOST", "PORT", "WORKER_NAME")


@dataclass(frozen=True)
class Place:
    """Where a role runs: `name` (its folder; a worker's WORKER_NAME), the `address` it listens on
    and is reached at, and the command `prefix` that runs a program there ([] here)."""
    name: str
    address: str = "127.0.0.1"
    prefix: tuple = ()


@dataclass
class Layout:
    """Which place runs what: the servers on `db`, one web server per place of `web`, one training
    worker per place of `workers`, nginx (here, in this namespace) listening on `front` (host:port)."""
    db: Place
    web: list
    workers: list
    front: str
    isolate: bool = False  # mount an empty tmpfs over the other hosts' folders (namespaces only)
    hosts: list = field(default_factory=list)

    @classmethod
    def loopback(cls, web=2, workers=1, port=None):
        from scripts.cluster.servers import free_ports
        front = f"127.0.0.1:{port or free_ports(1)[0]}"
        return cls(Place("db"), [Place(f"web{i + 1}") for i in range(web)],
                   [Place(f"worker{i + 1}") for i in range(workers)], front)

    @classmethod
    def namespaces(cls, hosts, db: str, web: list, workers: list, front_port: int):
        """Places in the network namespaces of a scripts.cluster_net.Hosts; nginx listens on the
        bridge's own address, so every connection stays on the cluster's link."""
        def place(name):
            return Place(name, hosts.address(name), tuple(hosts.command(name, [])))
        return cls(place(db), [place(n) for n in web], [place(n) for n in workers],
                   f"{hosts.subnet}.1:{front_port}", isolate=True, hosts=list(hosts.names))


def clean_environment() -> dict:
    """This process's environment without the cluster's settings and the store's credentials."""
    return {k: v for k, v in os.environ.items() if k not in NOT_INHERITED and not k.startswith("AWS_")}


class _AppProcess(_Server):
    """A process of the web app's code (gunicorn, a worker) with the cluster's settings."""

    def __init__(self, folder, place: Place, settings: dict, prefix=(), timeout=180.0, grace=30.0):
        self.place, self.settings = place, dict(settings)
        self.instance = Path(folder) / "instance"
        self.instance.mkdir(parents=True, exist_ok=True)
        super().__init__(folder, host=place.address, prefix=prefix or place.prefix, timeout=timeout, grace=grace)

    @classmethod
    def unavailable(cls) -> str:
        return ""

    def _env(self) -> dict:
        return {**clean_environment(), **self.settings, "INSTANCE_PATH": str(self.instance),
                "PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"}

    def _ask_to_stop(self):
        os.kill(self.process.pid, signal.SIGTERM)  # the leader only: it stops its own children

    def kill(self):
        """SIGKILL to every process this role started (a host that dies), then reaps them."""
        for pid in list(self._remember()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.stop()


class WebHost(_AppProcess):
    """gunicorn with gunicorn.conf.py (what `make serve` runs), bound to the place's address."""

    name = "web"

    def _env(self) -> dict:
        # PROXY_HOPS: nginx is in front, so its X-Forwarded-For names the client the rate limits count
        return {**super()._env(), "WEB_HOST": self.host, "PORT": str(self.port), "PROXY_HOPS": "1"}

    def _argv(self) -> list:
        return [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_ROOT / "gunicorn.conf.py"), "wsgi:app"]

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _answers(self) -> bool:
        with urllib.request.urlopen(self.base + "/readyz", timeout=3) as response:
            return response.status == 200


class Worker(_AppProcess):
    """A training worker (`python -m webapp.lifecycle.worker`, what `make worker` runs); it answers
    once RQ lists a worker with one of its process ids."""

    name = "worker"

    def _env(self) -> dict:
        return {**super()._env(), "WORKER_NAME": self.place.name}

    def _argv(self) -> list:
        return [sys.executable, "-m", "webapp.lifecycle.worker"]

    def _answers(self) -> bool:
        import redis
        from rq import Worker as RQWorker
        mine = set(self._remember())
        with redis.Redis.from_url(self.settings["REDIS_URL"], socket_connect_timeout=3) as connection:
            return any(w.pid in mine for w in RQWorker.all(connection=connection))


def worker_module_missing() -> str:
    """"" when `python -m webapp.lifecycle.worker` exists, else why the cluster runs no worker."""
    if importlib.util.find_spec("webapp.lifecycle.worker") is None:
        return "webapp/lifecycle/worker.py does not exist yet: no training worker started"
    return ""


def new_secrets() -> dict:
    """The secrets every host must share in cluster mode, random for this cluster only."""
    return {"SECRET_KEY": secrets.token_hex(32), "ADMIN_TOKEN": secrets.token_urlsafe(32),
            "ADMIN_PASSWORD": secrets.token_urlsafe(18)}


class Cluster:
    """The roles of `layout`, started in `folder` (which the user postgres must be able to reach when
    running as root: a folder under /tmp made here is). `settings` adds to or overrides what every
    web host and worker gets (TRAIN_SUITE, JOB_LOST_S, ...); `workers=False` starts none."""

    def __init__(self, folder, layout: Layout, model_dir=SHIPPED_MODEL, train_data=TRAIN_DATA, settings=None):
        self.folder, self.layout = Path(folder).resolve(), layout
        self.extra = {"MODEL_DIR": str(model_dir), "TRAIN_DATA": str(train_data), **(settings or {})}
        self.secrets = new_secrets()
        self.started = []  # every role, in the order started; stopped in reverse
        self.db = self.redis = self.store = self.front = None
        self.web, self.workers = {}, {}
        self.no_workers = worker_module_missing()

    # ---- the settings ----
    def settings(self) -> dict:
        """What every web host and worker gets, the same everywhere."""
        return {"DATABASE_URL": self.db.url, "REDIS_URL": self.redis.url,
                "MODEL_STORE_URL": self.store.url_for(STORE_PREFIX), **self.store.env, **self.secrets,
                **self.extra}

    @property
    def url(self) -> str:
        return self.front.base

    @property
    def admin_token(self) -> str:
        return self.secrets["ADMIN_TOKEN"]

    def host_folder(self, place: Place, role: str) -> Path:
        return self.folder / place.name / role

    def prefix(self, place: Place) -> list:
        """The place's prefix; isolated, with every other host's folder hidden under an empty tmpfs."""
        if not (self.layout.isolate and place.prefix):
            return list(place.prefix)
        others = [str(self.folder / name) for name in self.layout.hosts if name != place.name]
        script = "".join(f"mount -t tmpfs -o size=1m,mode=0755 none {shlex.quote(p)} && " for p in others)
        return [*place.prefix, "sh", "-c", script + 'exec "$@"', "sh"]

    # ---- the life cycle ----
    def start(self):
        try:
            self._prepare_folders()
            self._start_servers()
            settings = self.settings()
            self.web = self._start_all(WebHost, "web", self.layout.web, settings)
            if not self.no_workers:
                self.workers = self._start_all(Worker, "worker", self.layout.workers, settings)
            self._start_front()
        except BaseException:
            self.stop()
            raise
        return self

    def _prepare_folders(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        os.chmod(self.folder, 0o755)  # as root, PostgreSQL runs as the user postgres, who must pass
        places = [self.layout.db, *self.layout.web, *self.layout.workers]
        for name in {p.name for p in places} | set(self.layout.hosts):
            (self.folder / name).mkdir(exist_ok=True)
            os.chmod(self.folder / name, 0o755)

    def _start_servers(self):
        db = self.layout.db
        where = {"host": db.address, "prefix": self.prefix(db)}
        self.db = Postgres(self.host_folder(db, "postgres"), **where)
        self.started.append(self.db)
        self.redis = Redis(self.host_folder(db, "redis"), **where)
        self.started.append(self.redis)
        self.store = SeaweedS3(self.host_folder(db, "s3"), **where)
        self.started.append(self.store)

    def _start_all(self, kind, role: str, places: list, settings: dict) -> dict:
        """One `kind` per place, started side by side; any failure stops the ones that did start."""
        with concurrent.futures.ThreadPoolExecutor(max(1, len(places))) as pool:
            futures = {p.name: pool.submit(kind, self.host_folder(p, role), p, settings, self.prefix(p))
                       for p in places}
        done, errors = {}, []
        for name, future in futures.items():
            try:
                done[name] = future.result()
                self.started.append(done[name])
            except Exception as error:  # every failure said, not only the first
                errors.append(f"{role} on {name}: {error!r}")
        if errors:
            raise ServerError("\n".join(errors))
        return done

    def _start_front(self):
        from scripts.nginx_front import NginxFront
        self.front = NginxFront(self.folder / "nginx", self.layout.front,
                                [f"{w.host}:{w.port}" for w in self.web.values()])
        self.started.append(self.front)

    def stop(self):
        """Stops every role started, the last started first; every one is tried."""
        errors = []
        while self.started:
            role = self.started.pop()
            try:
                role.stop()
            except Exception as error:
                errors.append(f"{role!r}: {error!r}")
        if errors:
            raise ServerError("stopping the cluster: " + "; ".join(errors))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def describe(self) -> str:
        """What runs where, as `make cluster` prints it."""
        lines = [f"nginx          {self.url}  (in front of {', '.join(w.base for w in self.web.values())})",
                 f"PostgreSQL     {self.db.url}", f"Redis          {self.redis.url}",
                 f"S3 (SeaweedFS) {self.store.endpoint}  MODEL_STORE_URL={self.store.url_for(STORE_PREFIX)}"]
        lines += [f"worker         {name}  (log {w.log_path})" for name, w in self.workers.items()]
        if self.no_workers:
            lines.append(f"worker         none: {self.no_workers}")
        lines += [f"web host       {name}  {w.base}  (log {w.log_path})" for name, w in self.web.items()]
        return "\n".join(lines)
