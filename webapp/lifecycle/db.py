"""The admin database, one layer for both engines (SQLAlchemy Core, no ORM):

- DATABASE_URL unset: one SQLite file in the instance folder (WAL mode), shared by every gunicorn
  worker and job process of the host, exactly as the single-host product always had;
- `postgresql+psycopg://...`: PostgreSQL, shared by every web host and training worker.

It holds training jobs with their metrics and log lines, failed login attempts and feedback sends
(so throttling works across workers and hosts), the photos users sent as feedback, and the active
model version. The schema is made and upgraded by the Alembic migrations in
webapp/lifecycle/migrations, once per process and database, when the first connection is opened;
an instance's SQLite file from before migrations upgrades in place.

Connections are in autocommit mode; `write_transaction` is the one way to group statements, and
it serialises every such group against every other (SQLite: BEGIN IMMEDIATE takes the write lock
at once; PostgreSQL: a transaction-scoped advisory lock), so check-then-write sequences of
concurrent processes never interleave, on either engine.
"""

import fcntl
import os
import sqlite3
import threading
import time
from contextlib import closing, contextmanager
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from webapp.lifecycle.schema import ACTIVE  # noqa: F401 - re-exported: the states of a job not over

DB_FILE = "admin.sqlite3"
BUSY_TIMEOUT_S = 20
CONNECT_TIMEOUT_S = 5
WAL_RETRY_S = 0.02
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
WRITE_LOCK_KEY = 250_001  # PostgreSQL advisory lock of write_transaction (any fixed number)
MIGRATION_LOCK_KEY = 250_002

_engines = {}  # (pid, url) -> Engine: a forked worker opens its own connections
_engines_lock = threading.Lock()


def sqlite_url(instance_path) -> str:
    return f"sqlite:///{Path(instance_path) / DB_FILE}"


def database_url(instance_path, configured=None) -> str:
    """The configured DATABASE_URL, else the instance folder's SQLite file."""
    return configured or sqlite_url(instance_path)


class Connection:
    """One database connection: `execute(sql, {name: value})` with named parameters (`:name`),
    returning rows that read like dicts (`row["status"]`, `dict(row)`)."""

    def __init__(self, connection: sa.Connection):
        self.raw = connection
        self.dialect = connection.dialect.name  # "sqlite" or "postgresql"

    def execute(self, sql: str, params=None):
        return self.raw.execute(sa.text(sql), params or {}).mappings()

    def executemany(self, sql: str, rows: list):
        if rows:
            self.raw.execute(sa.text(sql), rows)

    def close(self):
        self.raw.close()


def engine(url: str) -> sa.Engine:
    key = (os.getpid(), url)
    with _engines_lock:  # a worker's threads share one engine, migrated once
        if key not in _engines:
            made = _create_engine(url)
            _migrate(made)
            _engines[key] = made
    return _engines[key]


def _create_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        made = sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"timeout": BUSY_TIMEOUT_S})
        sa.event.listen(made, "connect", _sqlite_pragmas)
        return made
    # connect_timeout: a database host that vanished must not hold a request (or the serving
    # worker's once-a-second check of the active version) for the kernel's TCP timeout
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True,
                            connect_args={"connect_timeout": CONNECT_TIMEOUT_S})


def _sqlite_pragmas(dbapi_connection, _record):
    dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    _switch_to_wal(dbapi_connection)
    dbapi_connection.execute("PRAGMA synchronous = NORMAL")


def _switch_to_wal(conn):
    """Put the file in WAL mode (it stays so: later connections only read the mode). Switching needs
    an exclusive lock, and when two processes switch a new file at once SQLite answers one of them
    "database is locked" at once, without waiting in the busy handler (deadlock avoidance): measured
    as a 500 for one of twenty racing job starts on a fresh instance. So the switch is retried, until
    the file reports WAL or BUSY_TIMEOUT_S has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(WAL_RETRY_S)


def _migrate(made: sa.Engine):
    """Upgrade the schema to the newest migration, one process at a time (the others wait, then
    find it current). Checking the version first keeps a worker's start fast when nothing is due."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    with made.connect() as conn:
        if MigrationContext.configure(conn).get_current_revision() == head:
            return
    with _migration_lock(made), made.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


@contextmanager
def _migration_lock(made: sa.Engine):
    if made.dialect.name == "sqlite":
        lock_path = Path(made.url.database + ".migrate.lock")
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield
        return
    with made.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})


def connect(url: str) -> Connection:
    return Connection(engine(url).connect())


def database(url: str):
    """`with database(url) as conn:` one connection for a block of work, closed after."""
    return closing(connect(url))


@contextmanager
def write_transaction(conn: Connection):
    """A transaction that no other write_transaction of any process interleaves with, rolled back
    on any error (see the module's doc)."""
    if conn.dialect == "sqlite":
        conn.raw.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.raw.exec_driver_sql("BEGIN")
        conn.execute("SELECT pg_advisory_xact_lock(:key)", {"key": WRITE_LOCK_KEY})
    try:
        yield conn
    except BaseException:
        conn.raw.exec_driver_sql("ROLLBACK")
        raise
    conn.raw.exec_driver_sql("COMMIT")
