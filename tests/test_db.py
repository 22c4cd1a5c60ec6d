"""The admin database under concurrent first use: several processes opening a new file at once."""

import multiprocessing
import sqlite3
import threading
import time
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
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()["version_num"] == "0004"
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


# ---- the same guarantees on PostgreSQL (a real server, scripts/cluster/servers.py) ----

def insert_queued_job(url, barrier, outcomes):
    barrier.wait()
    try:
        with db.database(url) as conn, db.write_transaction(conn):
            conn.execute("INSERT INTO jobs (status, params, spec, created) VALUES ('queued', '{}', '{}', 0)")
        outcomes.put("inserted")
    except sqlalchemy.exc.IntegrityError:
        outcomes.put("refused")


def test_postgres_gets_the_schema_and_refuses_a_second_job_not_over(postgres_url):
    with db.database(postgres_url) as conn:
        assert conn.dialect == "postgresql"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()["version_num"] == "0004"
        conn.execute("INSERT INTO jobs (status, params, spec, created) VALUES ('running', '{}', '{}', :at)",
                     {"at": 1_765_000_000.123456})
        assert conn.execute("SELECT created FROM jobs").fetchone()["created"] == 1_765_000_000.123456  # double
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            conn.execute("INSERT INTO jobs (status, params, spec, created) VALUES ('queued', '{}', '{}', 0)")


def test_twenty_racing_inserts_from_separate_processes_give_exactly_one_job(postgres_url):
    context = multiprocessing.get_context("spawn")  # fresh processes, as separate hosts would be
    barrier, outcomes = context.Barrier(20), context.Queue()
    racers = [context.Process(target=insert_queued_job, args=(postgres_url, barrier, outcomes)) for _ in range(20)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(120)
    results = sorted(outcomes.get(timeout=5) for _ in racers)
    assert results == ["inserted"] + ["refused"] * 19
    with db.database(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*) AS n FROM jobs").fetchone()["n"] == 1


def test_postgres_write_transactions_do_not_interleave(postgres_url):
    """Check-then-write in two connections: the second waits for the first's commit, so it sees it."""
    with db.database(postgres_url) as first, db.database(postgres_url) as second:
        seen = []

        def second_writer():
            with db.write_transaction(second):
                seen.append(second.execute("SELECT COUNT(*) AS n FROM login_failures").fetchone()["n"])
        with db.write_transaction(first):
            first.execute("INSERT INTO login_failures (client, at) VALUES ('a', 1)")
            thread = threading.Thread(target=second_writer)
            thread.start()
            time.sleep(0.3)
            assert seen == []  # still waiting on the lock
        thread.join(10)
        assert seen == [1]
