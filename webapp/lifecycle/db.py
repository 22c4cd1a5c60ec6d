"""The admin database: one SQLite file in the instance folder (WAL mode), shared by every gunicorn
worker and by the job runner processes. Holds training jobs, their metrics and log lines, and
failed login attempts (so throttling works across workers), and the photos users sent as feedback
(their files live in <instance>/feedback, see webapp/lifecycle/feedback.py)."""

import sqlite3
import time
from contextlib import closing, contextmanager
from pathlib import Path

DB_FILE = "admin.sqlite3"
ACTIVE = ("queued", "running")  # the job states of a job that is not over
BUSY_TIMEOUT_S = 20

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    status TEXT NOT NULL,               -- queued, running, succeeded, failed, cancelled
    params TEXT NOT NULL,               -- JSON: what the admin asked for
    spec TEXT NOT NULL,                 -- JSON: command, folders, gate margin (for the runner)
    created REAL NOT NULL, started REAL, finished REAL,
    runner_pid INTEGER, runner_start TEXT, pid INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER, epochs INTEGER, step INTEGER, steps_per_epoch INTEGER,
    global_step INTEGER, total_steps INTEGER, progress REAL, elapsed_s REAL, eta_s REAL,
    version TEXT, result TEXT, error TEXT
);
CREATE TABLE IF NOT EXISTS metrics (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL, type TEXT NOT NULL, record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_job ON metrics (job_id, seq);
CREATE TABLE IF NOT EXISTS log_lines (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL, line TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS log_lines_job ON log_lines (job_id, seq);
CREATE TABLE IF NOT EXISTS login_failures (client TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS login_failures_client ON login_failures (client, at);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,          -- of the re-encoded photo's pixels: the same photo is one item
    claimed TEXT NOT NULL,              -- what the user said it is: a class name or 'none'
    label TEXT NOT NULL,                -- the label after review (the claimed one until relabelled)
    predicted TEXT, version TEXT,       -- what the model answered, and which version did
    status TEXT NOT NULL DEFAULT 'pending',   -- pending, accepted, rejected
    created REAL NOT NULL, reviewed REAL,
    sends INTEGER NOT NULL DEFAULT 1    -- how often it was sent
);
CREATE INDEX IF NOT EXISTS feedback_status ON feedback (status, label);
CREATE TABLE IF NOT EXISTS feedback_sends (client TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS feedback_sends_client ON feedback_sends (client, at);
"""

_ready = set()  # database files whose schema this process has already ensured
WAL_RETRY_S = 0.02


def connect(db_path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit BEGIN IMMEDIATE ... COMMIT)."""
    db_path = str(db_path)
    conn = sqlite3.connect(db_path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    if db_path not in _ready:
        _switch_to_wal(conn)
        conn.executescript(SCHEMA)
        _ready.add(db_path)
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


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


def db_path_for(instance_path) -> Path:
    return Path(instance_path) / DB_FILE


def database(instance_path):
    """`with database(app.instance_path) as conn:` one connection for a block of work, closed after."""
    return closing(connect(db_path_for(instance_path)))


@contextmanager
def write_transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error: takes SQLite's write lock at once, so
    check-then-write sequences of concurrent processes never interleave."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
