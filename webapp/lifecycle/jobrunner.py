"""One training job's supervisor process: `python -m webapp.lifecycle.jobrunner <job id>`, on the
database named by DATABASE_URL in its environment (jobs.start passes the site's).

Started by `webapp.lifecycle.jobs.start` in its own session. Starts the trainer (in its own process group,
so a cancel reaches torchrun's workers too), copies the trainer's JSON records and log lines into
the admin database twice a second, relays a cancel request as SIGTERM (SIGKILL after a grace
period), and records the end: a finished model becomes a new version in the store and goes
through the promotion gate (measured on reviewed user photos too); a stopped trainer is
`cancelled`; anything else is `failed`.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from ml.nets.modelfile import ModelFileError
from webapp.lifecycle.db import ACTIVE, connect, write_transaction
from webapp.lifecycle.gate import promotion_gate, record_feedback
from webapp.lifecycle.procs import process_start, signal_group
from webapp.lifecycle.versions import ModelStore

POLL_S = 0.5
CANCEL_GRACE_S = 10      # SIGTERM first; SIGKILL when the trainer has not stopped by then
EXIT_STOPPED = 3         # ml.train's status after a clean stop on SIGTERM
MAX_LINE = 1000


class Tail:
    """The complete lines appended to a file since the last read."""

    def __init__(self, path):
        self.path, self.offset, self.partial = Path(path), 0, b""

    def lines(self) -> list:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        *complete, self.partial = (self.partial + data).split(b"\n")
        return [line.decode("utf-8", "replace").rstrip("\r") for line in complete]


class Runner:
    def __init__(self, database_url, job_id):
        self.conn = connect(database_url)
        self.job_id = job_id
        row = self.conn.execute("SELECT * FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
        self.spec = json.loads(row["spec"])
        self.job_dir = Path(self.spec["job_dir"])
        self.events = Tail(self.job_dir / "events.jsonl")
        self.log = Tail(self.job_dir / "train.log")
        self.trainer = None
        self.term_sent_at = None
        self.stop_requested = False

    def update(self, **columns):
        """Change this job's row, only while it is still queued or running."""
        assignments = ", ".join(f"{name} = :{name}" for name in columns)
        self.conn.execute(f"UPDATE jobs SET {assignments} WHERE id = :job_id AND status IN ('queued', 'running')",
                          dict(columns, job_id=self.job_id))

    def row(self):
        return self.conn.execute("SELECT status, cancel_requested FROM jobs WHERE id = :id",
                                 {"id": self.job_id}).fetchone()

    def run(self) -> int:
        info = process_start(os.getpid())
        self.update(runner_pid=os.getpid(), runner_start=info[1] if info else None)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.row()["cancel_requested"]:
            return self.finish("cancelled", error=None)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.job_dir / "train.log", "ab") as log:
                self.trainer = subprocess.Popen(
                    self.spec["command"], cwd=self.spec["cwd"], stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        except OSError as error:
            return self.finish("failed", error=f"could not start the trainer: {error}")
        self.update(status="running", started=time.time(), pid=self.trainer.pid)
        returncode = self.watch()
        self.copy_output()
        return self.conclude(returncode)

    def _on_sigterm(self, signum, frame):
        self.stop_requested = True  # stopping the runner stops its trainer cleanly first

    def watch(self):
        while True:
            returncode = self.trainer.poll()
            if returncode is not None:
                return returncode
            self.copy_output()
            row = self.row()
            if row["status"] not in ACTIVE:  # someone gave up on this job: stop the trainer for good
                signal_group(self.trainer.pid, signal.SIGKILL)
            elif row["cancel_requested"] or self.stop_requested:
                self.stop_trainer()
            time.sleep(POLL_S)

    def stop_trainer(self):
        now = time.monotonic()
        if self.term_sent_at is None:
            self.term_sent_at = now
            signal_group(self.trainer.pid, signal.SIGTERM)
        elif now - self.term_sent_at > CANCEL_GRACE_S:
            signal_group(self.trainer.pid, signal.SIGKILL)

    def copy_output(self):
        """Trainer records -> metrics rows and the job's progress columns; log lines -> log rows."""
        records, lines = [], self.log.lines()
        for line in self.events.lines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        if not records and not lines:
            return
        with write_transaction(self.conn):
            self.conn.executemany("INSERT INTO metrics (job_id, type, record) VALUES (:job_id, :type, :record)",
                                  [{"job_id": self.job_id, "type": r.get("type", "?"), "record": json.dumps(r)}
                                   for r in records])
            self.conn.executemany("INSERT INTO log_lines (job_id, line) VALUES (:job_id, :line)",
                                  [{"job_id": self.job_id, "line": line[:MAX_LINE]} for line in lines])
            self.record_progress(records)

    def record_progress(self, records):
        """The job's progress columns from the newest step and start records."""
        steps = [r for r in records if r.get("type") == "step"]
        if steps:
            s = steps[-1]
            self.update(**{k: s.get(k) for k in ("epoch", "epochs", "step", "steps_per_epoch", "global_step",
                                                 "total_steps", "progress", "elapsed_s", "eta_s")})
        starts = [r for r in records if r.get("type") == "start"]
        if starts:
            self.update(epochs=starts[-1].get("epochs"))

    def conclude(self, returncode) -> int:
        cancelled = (self.term_sent_at is not None or returncode == EXIT_STOPPED
                     or bool(self.row()["cancel_requested"]))
        if returncode == 0 and not cancelled:
            return self.store_version()
        shutil.rmtree(self.job_dir / "model", ignore_errors=True)  # nothing loadable stays behind
        if cancelled:
            checkpoint = self.job_dir / "resume.pt"
            return self.finish("cancelled", result={"resumable": checkpoint.is_file()})
        if returncode < 0:
            reason = f"the trainer was killed by {signal.Signals(-returncode).name}"
            if returncode == -signal.SIGKILL:
                reason += " (out of memory, or killed by hand)"
        else:
            reason = f"the trainer exited with status {returncode}"
        tail = self.tail_text()
        return self.finish("failed", error=reason + (":\n" + tail if tail else ""))

    def tail_text(self, lines=10) -> str:
        rows = self.conn.execute("SELECT line FROM log_lines WHERE job_id = :id ORDER BY seq DESC LIMIT :n",
                                 {"id": self.job_id, "n": lines}).fetchall()
        return "\n".join(r["line"] for r in reversed(rows))

    def store_version(self) -> int:
        """Move the model into the store (one rename) and put it through the promotion gate."""
        store = ModelStore(self.spec["store"], self.spec["shipped"])
        try:
            version_id = store.add(self.job_dir / "model", self.job_id)
            user_photos = self.spec.get("feedback") or {}
            record_feedback(store, version_id, user_photos.get("trained_on", 0), user_photos.get("eval_items"))
            decision = promotion_gate(store, version_id, self.spec["margin"], user_photos)
        except (ModelFileError, OSError, ValueError) as error:  # ValueError: an unreadable feedback photo
            return self.finish("failed", error=f"the trained model could not be stored: {error}")
        finally:
            shutil.rmtree(self.job_dir / "model", ignore_errors=True)
        self.update(version=version_id)
        return self.finish("succeeded", result=decision)

    def finish(self, status, error=None, result=None) -> int:
        self.update(status=status, finished=time.time(), error=error,
                    result=json.dumps(result) if result is not None else None)
        return 0 if status == "succeeded" else 1


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.environ.get("DATABASE_URL"):
        sys.exit("usage: DATABASE_URL=<database url> python -m webapp.lifecycle.jobrunner <job id>")
    sys.exit(Runner(os.environ["DATABASE_URL"], int(argv[0])).run())


if __name__ == "__main__":
    main()
