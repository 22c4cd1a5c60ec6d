-- The admin database's schema before migrations existed (webapp/lifecycle/db.py until #25):
-- tests/test_db.py builds an old instance's file from it and checks it upgrades in place.
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
