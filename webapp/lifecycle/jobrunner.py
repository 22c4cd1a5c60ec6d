"""One training job's supervisor: `python -m webapp.lifecycle.jobrunner <job id>` for a local job
(jobs.start spawns it in its own session, with the site's settings, DATABASE_URL and
INSTANCE_PATH in its environment), or `Runner(site, job_id).run()` inside a training worker
(webapp.lifecycle.worker) for a queued one.

It computes the job's folder and command from its own host's site (jobs.plan), records where
the job runs (host, device, processes) and heartbeats into the row every JOB_HEARTBEAT_S, starts
the trainer (in its own process group, so a cancel reaches torchrun's workers too; it dies with
the runner: PR_SET_PDEATHSIG), copies the trainer's JSON records and log lines into the admin
database twice a second, relays a cancel request from the row as SIGTERM (SIGKILL after a grace
period), and records the end: a finished model becomes a new version in the store and goes
through the promotion gate (measured on reviewed user photos too); a stopped trainer is
`cancelled`; anything else is `failed`. A queued job's resume checkpoint (written after every
epoch and on a stop) is copied to the object store whenever it changes, so any worker can resume
it; a resumed one starts from the store's copy.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from ml.nets.modelfile import ModelFileError
from ml.train.libc import die_with_parent
from webapp.lifecycle import jobs, nodes, versions
from webapp.lifecycle.db import ACTIVE, connect, write_transaction
from webapp.lifecycle.gate import promotion_gate, record_feedback
from webapp.lifecycle.objectstore import StoreError, open_store
from webapp.lifecycle.procs import process_start, signal_group
from webapp.lifecycle.site import Site
from webapp.settings import instance_path, settings_for

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


def host_name(settings) -> str:
    return settings.get("WORKER_NAME") or socket.gethostname()


JOB_BEAT = "UPDATE jobs SET heartbeat = :now WHERE id = :id AND status IN ('queued', 'running')"


class Heartbeat:
    """A thread writing `jobs.heartbeat = now` into the job's row every `interval` seconds, on its
    own connection, while the job is queued or running (or another `statement` with :now and :id:
    a node's row of a job over several workers)."""

    def __init__(self, database_url, job_id, interval, statement=JOB_BEAT):
        self.database_url, self.job_id, self.interval = database_url, job_id, max(0.05, float(interval))
        self.statement = statement
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id}", daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.stopped.set()
        self.thread.join(timeout=5)

    def _beat(self):
        conn = connect(self.database_url)
        try:
            while not self.stopped.wait(self.interval):
                try:
                    conn.execute(self.statement, {"now": time.time(), "id": self.job_id})
                except Exception as error:  # the database away for a moment: try again at the next beat
                    print(f"heartbeat of job {self.job_id} not written: {error}", file=sys.stderr, flush=True)
        finally:
            conn.close()


class Runner:
    def __init__(self, site: Site, job_id):
        self.site = site
        self.conn = connect(site.database_url)
        self.job_id = job_id
        row = self.conn.execute("SELECT * FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
        self.params, self.spec = json.loads(row["params"]), json.loads(row["spec"] or "{}")
        self.queued = self.spec.get("mode") == "queue"
        self.lead = nodes.Lead(self) if self.queued and int(self.params.get("nodes", 1)) > 1 else None
        self.failure = None  # why the runner stopped the trainer itself (the other nodes never came)
        self.job_dir = jobs.jobs_root(site) / str(job_id)
        self.events = Tail(self.job_dir / "events.jsonl")
        self.log = Tail(self.job_dir / "train.log")
        self.plan = None
        self.trainer = None
        self.term_sent_at = None
        self.stop_requested = False
        self.heartbeat = None
        self.store = None
        self.uploaded = None  # (mtime, size) of the checkpoint last copied to the store

    def update(self, **columns):
        """Change this job's row, only while it is still queued or running."""
        assignments = ", ".join(f"{name} = :{name}" for name in columns)
        self.conn.execute(f"UPDATE jobs SET {assignments} WHERE id = :job_id AND status IN ('queued', 'running')",
                          dict(columns, job_id=self.job_id))

    def row(self):
        return self.conn.execute("SELECT status, cancel_requested FROM jobs WHERE id = :id",
                                 {"id": self.job_id}).fetchone()

    def claim(self) -> bool:
        """Record where the job runs and this runner; a queued job only if no worker took it yet
        and it was not cancelled meanwhile (False: leave it)."""
        info = process_start(os.getpid())
        settings = self.site.settings
        columns = {"host": host_name(settings), "device": str(settings.get("TRAIN_DEVICE") or "auto"),
                   "processes": int(settings["TRAIN_NPROC"]), "heartbeat": time.time(),
                   "runner_pid": os.getpid(), "runner_start": info[1] if info else None, "id": self.job_id}
        only_free = " AND host IS NULL" if self.queued else ""
        taken = self.conn.execute(
            "UPDATE jobs SET host = :host, device = :device, processes = :processes, heartbeat = :heartbeat, "
            "runner_pid = :runner_pid, runner_start = :runner_start WHERE id = :id AND status = 'queued'"
            + only_free + " RETURNING id", columns).fetchone()
        return taken is not None

    def run(self) -> int:
        if not self.claim():
            return 1
        self.heartbeat = Heartbeat(self.site.database_url, self.job_id, self.site.settings["JOB_HEARTBEAT_S"]).start()
        try:
            return self._run()
        finally:
            self.heartbeat.stop()

    def _run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.row()["cancel_requested"]:
            return self.finish("cancelled", error=None)
        self.job_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.prepare()
        except (OSError, StoreError, ValueError, KeyError) as error:
            return self.finish("failed", error=f"the job could not be prepared on {host_name(self.site.settings)}: "
                                               f"{type(error).__name__}: {error}")
        runner_pid = os.getpid()
        try:
            with open(self.job_dir / "train.log", "ab") as log:
                self.trainer = subprocess.Popen(
                    self.plan.command, cwd=self.plan.cwd, stdin=subprocess.DEVNULL, stdout=log,
                    stderr=subprocess.STDOUT, start_new_session=True,
                    env=self.trainer_environment(),
                    preexec_fn=lambda: die_with_parent(signal.SIGKILL, runner_pid))
        except OSError as error:
            return self.finish("failed", error=f"could not start the trainer: {error}")
        self.update(status="running", started=time.time(), pid=self.trainer.pid)
        if self.lead is not None:
            self.lead.call_followers()
        returncode = self.watch()
        if returncode == 0 and self.lead is not None and self.failure is None:
            self.failure = self.lead.settle()
        self.copy_output()
        return self.conclude(returncode)

    def prepare(self):
        """The job's feedback snapshot (recorded in its spec), its store, its resume checkpoint,
        the rendezvous of a job over several workers, and its plan on this host."""
        photos = jobs.user_photos(self.site, self.spec, self.job_id, self.params)
        if self.spec.get("feedback") is None:
            self.spec["feedback"] = jobs.recorded_photos(photos)
            self.conn.execute("UPDATE jobs SET spec = :spec WHERE id = :id",
                              {"spec": json.dumps(self.spec), "id": self.job_id})
        if self.queued:
            self.store = open_store(self.site.settings.get("MODEL_STORE_URL"), self.site.instance)
            if self.params.get("resume"):
                self.fetch_checkpoint()  # before the followers are called: they fetch it from this job's key
        node = self.lead.open_rendezvous() if self.lead is not None else None
        self.plan = jobs.plan(self.site, self.job_id, self.params, self.spec, photos, node=node)

    def trainer_environment(self) -> dict:
        """PYTHONUNBUFFERED, and ML_TRAIN_DIE_WITH_PARENT so torchrun's ranks die with it as it
        dies with this runner; node 0 of a job over several workers: gloo's interface too."""
        if self.lead is not None:
            return nodes.trainer_environment(self.lead.address)
        return dict(os.environ, PYTHONUNBUFFERED="1", ML_TRAIN_DIE_WITH_PARENT="1")

    # ---- the resume checkpoint of a queued job, in the object store ----

    def fetch_checkpoint(self):
        """The resumed job's checkpoint from the store into this job's folder; it moves on to this
        job's key (a job is resumed once)."""
        source = jobs.checkpoint_key(self.params["resume"])
        self.store.get_file(source, self.job_dir / "resume.pt")
        self.store.put_file(jobs.checkpoint_key(self.job_id), self.job_dir / "resume.pt")
        self.uploaded = self.checkpoint_stamp()
        self.store.delete(source)

    def checkpoint_stamp(self):
        try:
            stat = (self.job_dir / "resume.pt").stat()
        except FileNotFoundError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def sync_checkpoint(self):
        """Copy the trainer's resume checkpoint to the store when it changed (it is written whole,
        by a rename, so what is read here is complete)."""
        if self.store is None:
            return
        stamp = self.checkpoint_stamp()
        if stamp is None or stamp == self.uploaded:
            return
        try:
            self.store.put_file(jobs.checkpoint_key(self.job_id), self.job_dir / "resume.pt")
            self.uploaded = stamp
        except FileNotFoundError:
            pass  # the trainer finished and removed it meanwhile
        except StoreError as error:
            print(f"checkpoint of job {self.job_id} not copied to the store: {error}", file=sys.stderr, flush=True)

    def _on_sigterm(self, signum, frame):
        self.stop_requested = True  # stopping the runner stops its trainer cleanly first

    def watch(self):
        while True:
            returncode = self.trainer.poll()
            if returncode is not None:
                return returncode
            self.copy_output()
            self.sync_checkpoint()
            row = self.row()
            if self.lead is not None and self.failure is None:
                self.failure = self.lead.check()
            if row["status"] not in ACTIVE or self.failure:  # given up on: stop the trainer for good
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
            if starts[-1].get("device"):
                self.update(device=starts[-1]["device"])  # the device the trainer picked (auto: cuda or cpu)

    def conclude(self, returncode) -> int:
        if self.failure:
            shutil.rmtree(self.job_dir / "model", ignore_errors=True)
            return self.finish("failed", error=self.failure)
        cancelled = (self.term_sent_at is not None or returncode == EXIT_STOPPED
                     or bool(self.row()["cancel_requested"]))
        if returncode == 0 and not cancelled:
            return self.store_version()
        shutil.rmtree(self.job_dir / "model", ignore_errors=True)  # nothing loadable stays behind
        if cancelled:
            checkpoint = self.job_dir / "resume.pt"
            if self.store is not None:
                self.sync_checkpoint()
                resumable = self.uploaded is not None and self.uploaded == self.checkpoint_stamp()
                return self.finish("cancelled", result={"resumable": resumable})
            return self.finish("cancelled", result={"resumable": checkpoint.is_file()})
        self.sync_checkpoint()  # the last epoch's checkpoint, for a resume
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
        store = versions.store(self.site)
        try:
            version_id = store.add(self.job_dir / "model", self.job_id)
            user_photos = self.plan.feedback
            record_feedback(store, version_id, user_photos.get("trained_on", 0), user_photos.get("eval_items"))
            decision = promotion_gate(store, version_id, self.plan.margin, user_photos)
        except (ModelFileError, OSError, ValueError) as error:  # ValueError: an unreadable feedback photo
            return self.finish("failed", error=f"the trained model could not be stored: {error}")
        finally:
            shutil.rmtree(self.job_dir / "model", ignore_errors=True)
        self.update(version=version_id)
        if self.store is not None:
            try:
                self.store.delete(jobs.checkpoint_key(self.job_id))  # nothing left to resume
            except StoreError:
                pass
        return self.finish("succeeded", result=decision)

    def finish(self, status, error=None, result=None) -> int:
        self.update(status=status, finished=time.time(), error=error,
                    result=json.dumps(result) if result is not None else None)
        if self.lead is not None:
            self.lead.close(self.trainer.returncode if self.trainer else None)
        return 0 if status == "succeeded" else 1


def local_site() -> Site:
    """This process's site: INSTANCE_PATH and the settings in its environment (jobs.start passes
    the web app's)."""
    instance = Path(instance_path())
    return Site(instance, settings_for(instance))


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        sys.exit("usage: INSTANCE_PATH=<instance folder> [DATABASE_URL=<database url>] "
                 "python -m webapp.lifecycle.jobrunner <job id>")
    sys.exit(Runner(local_site(), int(argv[0])).run())


if __name__ == "__main__":
    main()
