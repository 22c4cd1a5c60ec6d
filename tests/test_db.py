"""The admin database under concurrent first use: several processes opening a new file at once."""

import multiprocessing
import sqlite3
import threading

from webapp.lifecycle import db

PROCESSES, THREADS, FRESH_FILES = 4, 6, 12


def open_at_once(path, barrier, errors):
    """THREADS threads of this process open the database at the same moment as the other processes'."""
    def open_and_read():
        barrier.wait()
        try:
            conn = db.connect(path)
            conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            conn.close()
        except sqlite3.Error as error:
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
