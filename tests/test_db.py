"""The admin database under concurrent first use: several processes opening a new file at once."""

import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlalchemy

from webapp.lifecycle import db

PROCESSES, THREADS, FRESH_FILES = 4, 6, 12


def open_at_once(path, barrier, errors):
    """THREADS threads of this process open the database at the same moment as the other processes'."""
    def open_and_read():
        barrier.wait()
        try:
            conn = db.connect(f"sqlite:///{path}")
            conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            conn.close()
        except (sqlite3.Error, sqlalchemy.exc.SQLAlchemyError) as error:
            errors.put(repr(error))

    threads = [threading.Thread(target=open_and_read) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_processes_racing_to_create_the_database_all_get_a_connection(tmp_path):
    # Before the WAL switch was retried, one trial in five with 2 processes x 10 threads lost a
    # connection to "database is locked" (a 500 for one of twenty racing job starts).
    context = multiprocessing.get_context("fork")
    errors = context.Queue()
    for trial in range(FRESH_FILES):
        path = str(tmp_path / f"admin-{trial}.sqlite3")
        barrier = context.Barrier(PROCESSES * THREADS)
        workers = [context.Process(target=open_at_once, args=(path, barrier, errors)) for _ in range(PROCESSES)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert all(w.exitcode == 0 for w in workers)
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert failures == []


# ---- the schema and its migrations ----

OLD_SCHEMA = Path(__file__).parent / "data" / "admin_schema_before_migrations.sql"


def test_an_instance_file_from_before_migrations_upgrades_in_place(tmp_path):
    path = tmp_path / db.DB_FILE
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SCHEMA.read_text())
        old.execute("INSERT INTO jobs (status, params, spec, created) VALUES ('succeeded', '{}', '{}', 1.5)")
        old.execute("INSERT INTO feedback (hash, claimed, label, created) VALUES ('h', 'cat', 'cat', 2.5)")
    with db.database(db.sqlite_url(tmp_path)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()["version_num"] == "0002"
        job = conn.execute("SELECT * FROM jobs").fetchone()
        assert (job["status"], job["created"], job["host"], job["heartbeat"]) == ("succeeded", 1.5, None, None)
        assert conn.execute("SELECT label FROM feedback").fetchone()["label"] == "cat"


def test_the_database_itself_refuses_a_second_job_that_is_not_over(tmp_path):
    """Not a check in Python: the partial unique index, so it holds for every host at once."""
    insert = "INSERT INTO jobs (status, params, spec, created) VALUES (:status, '{}', '{}', 0)"
    with db.database(db.sqlite_url(tmp_path)) as conn:
        conn.execute(insert, {"status": "succeeded"})
        conn.execute(insert, {"status": "failed"})
        conn.execute(insert, {"status": "queued"})
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            conn.execute(insert, {"status": "running"})
        conn.execute("UPDATE jobs SET status = 'succeeded' WHERE status = 'queued'")
        conn.execute(insert, {"status": "running"})  # once the first is over, a new one may start


def test_a_write_transaction_is_rolled_back_on_error(tmp_path):
    with db.database(db.sqlite_url(tmp_path)) as conn:
        with pytest.raises(RuntimeError), db.write_transaction(conn):
            conn.execute("INSERT INTO login_failures (client, at) VALUES ('a', 1)")
            raise RuntimeError("half-way")
        assert conn.execute("SELECT COUNT(*) AS n FROM login_failures").fetchone()["n"] == 0
