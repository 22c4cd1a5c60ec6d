"""Training jobs: start, cancel and observe them; their state lives in the admin database.

A job runs as its own process group, never in a web worker: `start()` inserts the job row under
a write transaction that refuses a second queued/running job (a cross-process guarantee), then

- REDIS_URL unset ("local"): spawns `python -m webapp.lifecycle.jobrunner <id>` in a new session,
  with this site's settings in its environment;
- REDIS_URL set ("queue"): puts the id on the RQ queue (webapp.lifecycle.jobqueue); the job stays
  queued, "waiting for a worker", until a worker (`python -m webapp.lifecycle.worker`, any host)
  takes it and runs the same runner there.

The runner starts the trainer (`python -m ml.train`, or torchrun) and copies its JSON records and
log lines into the database. A job's row holds what the admin asked for (`params`) and margins
(`spec`), never a path: the runner computes the job folder, the command and the store from the
settings and instance folder of the host it runs on (`plan`). The public functions take the
`Site` (instance folder and settings) they work on. Every reader but the /metrics count first
reconciles: a local job whose runner process is gone, or a queued job whose worker's heartbeat
is older than JOB_LOST_S ("worker lost"), is marked failed, so no job stays `running` forever.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ml.train.presets import PRESETS as TRAINING_PRESETS
from webapp.lifecycle import feedback, jobqueue, versions
from webapp.lifecycle.db import ACTIVE, write_transaction
from webapp.lifecycle.errors import LifecycleError
from webapp.lifecycle.objectstore import StoreError, open_store
from webapp.lifecycle.procs import log_file_tail, process_alive, process_start, signal_group
from webapp.settings import PROJECT_ROOT, settings_environment

QUEUED_TIMEOUT_S = 30      # a queued local job whose runner never registered is given up after this
WORKER_LOST = "worker lost"  # how the error of a queued job whose worker stopped heartbeating starts
LOG_TAIL_LINES = 40
PRESETS = tuple(TRAINING_PRESETS)
# field -> (type, minimum, maximum)
NUMERIC_FIELDS = {"epochs": (int, 1, 500), "lr": (float, 1e-6, 100.0), "batch_size": (int, 1, 8192),
                  "seed": (int, 0, 2**31 - 1), "limit": (int, 10, 10_000_000)}
NODES = (int, 1, 8)  # `nodes`: worker hosts one job runs on (torchrun's nodes); not a trainer flag
OTHER_FIELDS = {"preset", "data", "resume", "include_feedback", "init_from", "nodes"}
TRUE, FALSE = (True, "on"), (None, False)  # JSON booleans, and the HTML form's checkbox ("on" or absent)


def preset_summaries() -> dict:
    """preset -> one line for the job form, read from ml.train's presets so it cannot go stale."""
    def summary(c):
        widths = " " + "/".join(map(str, c["widths"])) if c["widths"] else ""
        return f"{c['arch']}{widths}, {c['epochs']} epochs, batch {c['batch_size']}, {c['optimizer']}"
    return {name: summary(config) for name, config in TRAINING_PRESETS.items()}


class JobError(LifecycleError):
    """A refused request: bad parameters (bad_request), no such job (not_found), a conflict
    (job_running, not_resumable, not_running) or a job process that could not start (spawn_failed)."""


# ---- settings ----

def jobs_root(site) -> Path:
    return site.instance / "jobs"


def data_sources(site) -> dict:
    """name -> folder: "default" is TRAIN_DATA; every folder in <instance>/datasets is one more."""
    sources = {"default": Path(site.settings["TRAIN_DATA"])}
    extra = site.instance / "datasets"
    if extra.is_dir():
        sources.update({p.name: p for p in sorted(extra.iterdir()) if p.is_dir() and p.name != "default"})
    return sources


def _number(name, value):
    kind, low, high = NODES if name == "nodes" else NUMERIC_FIELDS[name]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise JobError(f"{name} must be a number")
    try:
        number = float(value)
        if kind is int:
            if not number.is_integer():
                raise ValueError
            number = int(number)
    except ValueError:
        raise JobError(f"{name} must be {'a whole number' if kind is int else 'a number'}, not {value!r}") from None
    if not low <= number <= high:
        raise JobError(f"{name} must be between {low} and {high}")
    return number


def validate_params(site, data) -> dict:
    """The admin's request -> clean parameters; raises JobError (400) naming the bad field."""
    if not isinstance(data, dict):
        raise JobError("the request body must be a JSON object")
    unknown = set(data) - set(NUMERIC_FIELDS) - OTHER_FIELDS
    if unknown:
        raise JobError(f"unknown field(s): {', '.join(sorted(unknown))}")
    # absent or null: the default; anything else must be right (an empty or wrongly typed value too)
    params = {"preset": _or_default(data, "preset", "fast"), "data": _or_default(data, "data", "default")}
    if not isinstance(params["preset"], str) or params["preset"] not in PRESETS:
        raise JobError(f"preset must be one of {', '.join(PRESETS)}")
    sources = data_sources(site)
    if not isinstance(params["data"], str) or params["data"] not in sources:
        raise JobError(f"data must be one of {', '.join(sources)}")
    if not sources[params["data"]].is_dir():
        raise JobError(f"data source {params['data']} ({sources[params['data']]}) does not exist")
    for name in NUMERIC_FIELDS:
        if data.get(name) is not None:
            params[name] = _number(name, data[name])
    params["include_feedback"] = _flag("include_feedback", data.get("include_feedback"))
    if data.get("nodes") is not None:
        params["nodes"] = _number("nodes", data["nodes"])
        if params["nodes"] > 1 and not queue_mode(site):
            # the other nodes are other workers taking follower entries from the queue: a local
            # job has no queue and no other worker to ask
            raise JobError("nodes above 1 needs the job queue (REDIS_URL) and that many training workers; "
                           "without REDIS_URL a job runs on this host only")
    if data.get("init_from") is not None:
        params["init_from"] = _version(site, data["init_from"])
    return params


def _or_default(data: dict, name: str, default):
    return default if data.get(name) is None else data[name]


def _flag(name, value) -> bool:
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise JobError(f"{name} must be true or false")


def _version(site, version_id) -> str:
    """A stored version id (or "shipped") whose weights a fine-tuning job starts from."""
    try:
        versions.store(site).path(version_id if isinstance(version_id, str) else "")
    except versions.VersionError:
        raise JobError(f"init_from must be a version id (GET /api/v1/admin/versions), not {version_id!r}") from None
    return version_id


def checkpoint_key(job_id) -> str:
    """Where a queued job's resume checkpoint lives in the object store (every worker reads it)."""
    return f"checkpoints/{int(job_id)}/resume.pt"


def resumable(site, job_id, status, error, spec) -> bool:
    """A cancelled job, or a queued job whose worker was lost, with its checkpoint still there."""
    if status != "cancelled" and not (status == "failed" and (error or "").startswith(WORKER_LOST)):
        return False
    if spec.get("mode") != "queue":
        return (jobs_root(site) / str(job_id) / "resume.pt").is_file()
    try:
        return open_store(site.settings.get("MODEL_STORE_URL"), site.instance).exists(checkpoint_key(job_id))
    except StoreError:
        return False


def _resume_params(site, conn, data) -> tuple:
    """A resumed job repeats a cancelled (or worker-lost) job's parameters from its checkpoint;
    returns (params, the resumed job's spec)."""
    resume_id = data["resume"]
    if isinstance(resume_id, bool) or not isinstance(resume_id, (int, str)) or not str(resume_id).isdigit():
        raise JobError("resume must be a job id")
    resume_id = int(resume_id)
    row = conn.execute("SELECT status, params, spec, error FROM jobs WHERE id = :id", {"id": resume_id}).fetchone()
    if row is None or not resumable(site, resume_id, row["status"], row["error"], json.loads(row["spec"])):
        raise JobError(f"job {resume_id} has no resume checkpoint (only cancelled jobs and jobs whose worker "
                       "was lost do)", "not_resumable")
    return dict(json.loads(row["params"]), resume=resume_id), json.loads(row["spec"])


@dataclass(frozen=True)
class Node:
    """This host's part of a job over several workers: node `rank` of `nodes`, meeting the others
    at `endpoint` (host:port of node 0), giving up after `wait_s` without them."""
    nodes: int
    rank: int
    endpoint: str
    wait_s: float


def launcher(settings, node: Node = None) -> list:
    """`python -m ml.train`, or torchrun with TRAIN_NPROC processes here and, for a node of a job
    over several workers, torchrun's static rendezvous: node 0's agent hosts the store at the
    endpoint, and node ranks fix the global ranks, so rank 0 (which writes the model) is on the
    worker that took the job. (c10d's dynamic rendezvous orders nodes by address instead.)"""
    nproc = int(settings["TRAIN_NPROC"])
    if nproc <= 1 and node is None:
        return [sys.executable, "-m", "ml.train"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
    if node is not None:
        address, port = node.endpoint.rsplit(":", 1)
        command += ["--nnodes", str(node.nodes), "--node-rank", str(node.rank), "--master-addr", address,
                    "--master-port", port, "--rdzv-conf", f"timeout={max(1, int(node.wait_s))}"]
    return command + ["-m", "ml.train"]


def build_command(site, params, job_dir, extra_data=None, every_epoch=False, node: Node = None) -> list:
    """The trainer's command line, from this host's settings; `extra_data`: the folder of reviewed
    user photos to add; `every_epoch`: a resume checkpoint after every epoch (queued jobs); `node`:
    this host's part of a job over several workers."""
    settings = site.settings
    command = launcher(settings, node)
    command += ["--preset", params["preset"], "--data", str(data_sources(site)[params["data"]]),
                "--out", str(job_dir / "model"), "--events", str(job_dir / "events.jsonl"),
                "--checkpoint", str(job_dir / "resume.pt")]
    if settings.get("TRAIN_DEVICE") and settings["TRAIN_DEVICE"] != "auto":
        command += ["--device", str(settings["TRAIN_DEVICE"])]
    if every_epoch:
        command.append("--checkpoint-every-epoch")
    for name in NUMERIC_FIELDS:
        if name in params:
            command += ["--" + name.replace("_", "-"), str(params[name])]
    if settings.get("TRAIN_THREADS"):
        command += ["--threads", str(int(settings["TRAIN_THREADS"]))]
    if not settings["TRAIN_SUITE"]:
        command.append("--no-suite")
    if params.get("init_from"):
        command += ["--init-from", str(versions.store(site).path(params["init_from"]))]
    if extra_data:
        command += ["--extra-data", str(extra_data)]
    return command + (["--resume"] if params.get("resume") else [])


@dataclass
class Plan:
    """How a job runs on this host: computed by the runner from its own site, never stored."""
    job_dir: Path
    command: list
    cwd: str
    feedback: dict       # the gate's spec["feedback"]: trained_on, train_dir, eval_items (with files), margins
    margin: float


def snapshot_dir(site, spec, job_id) -> Path:
    """The job folder holding the job's copy of reviewed feedback: its own, or for a resumed job
    its first run's (so a resume trains on the same photos)."""
    return jobs_root(site) / str(spec.get("snapshot_job") or job_id)


def user_photos(site, spec, job_id, params) -> dict:
    """The job's reviewed feedback as files on this host, in the shape the gate reads: the
    snapshot recorded in the spec when this host holds it, else a new snapshot
    (webapp.lifecycle.feedback.snapshot) taken now and recorded."""
    root = snapshot_dir(site, spec, job_id)
    recorded = spec.get("feedback")
    folder = root / feedback.FOLDER
    if recorded is not None and (folder.is_dir() or not (recorded["trained_on"] or recorded["eval_items"])):
        train_dir = folder / "train" if recorded["trained_on"] else None
        items = [dict(item, file=str(folder / "eval" / item["label"] / f"{item['hash']}.png"))
                 for item in recorded["eval_items"]]
        return {"trained_on": recorded["trained_on"], "train_dir": str(train_dir) if train_dir else None,
                "eval_items": items}
    return feedback.snapshot(site, root, params.get("include_feedback", False))


def recorded_photos(photos: dict) -> dict:
    """What a job's spec keeps of its snapshot: counts and items, no host's paths."""
    return {"trained_on": photos["trained_on"],
            "eval_items": [{k: item[k] for k in ("id", "hash", "label")} for item in photos["eval_items"]]}


def plan(site, job_id, params, spec, photos=None, node: Node = None) -> Plan:
    """Job `job_id`'s folder, command and gate inputs on this host (`site`); `node`: this host's
    part of a job over several workers."""
    job_dir = jobs_root(site) / str(job_id)
    photos = photos if photos is not None else user_photos(site, spec, job_id, params)
    command = build_command(site, params, job_dir, photos["train_dir"], every_epoch=spec.get("mode") == "queue",
                            node=node)
    margins = {"accuracy_margin": float(spec.get("feedback_margin", site.settings["FEEDBACK_MARGIN"])),
               "unrecognised_margin": float(spec.get("unrecognised_margin", site.settings["UNRECOGNISED_MARGIN"]))}
    return Plan(job_dir, command, str(PROJECT_ROOT), dict(photos, **margins),
                float(spec.get("margin", site.settings["PROMOTION_MARGIN"])))


# ---- reading ----

def _iso(timestamp):
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def job_dict(conn, row, since=0, details=True) -> dict:
    end = row["finished"] or (time.time() if row["status"] in ACTIVE else None)
    job = {key: row[key] for key in ("id", "status", "epoch", "epochs", "step", "steps_per_epoch",
                                     "global_step", "total_steps", "progress", "elapsed_s", "eta_s",
                                     "version", "error", "runner_pid", "host", "device", "processes")}
    queued = json.loads(row["spec"] or "{}").get("mode") == "queue"
    job.update(params=json.loads(row["params"]), result=json.loads(row["result"] or "null"),
               pid=row["pid"] if row["status"] == "running" else None,
               cancel_requested=bool(row["cancel_requested"]),
               created=_iso(row["created"]), started=_iso(row["started"]), finished=_iso(row["finished"]),
               heartbeat=_iso(row["heartbeat"]),
               waiting_for_worker=queued and row["status"] == "queued" and row["host"] is None,
               duration_s=round(end - row["started"], 1) if row["started"] and end else None,
               rendezvous=row["rendezvous"], nodes=node_list(conn, row))
    if details:
        metrics = conn.execute("SELECT seq, record FROM metrics WHERE job_id = :id AND seq > :since ORDER BY seq",
                               {"id": row["id"], "since": since}).fetchall()
        job["metrics"] = [dict(json.loads(m["record"]), seq=m["seq"]) for m in metrics]
        job["next_since"] = metrics[-1]["seq"] if metrics else since
        lines = conn.execute("SELECT line FROM log_lines WHERE job_id = :id ORDER BY seq DESC LIMIT :n",
                             {"id": row["id"], "n": LOG_TAIL_LINES}).fetchall()
        job["log_tail"] = [r["line"] for r in reversed(lines)]
    return job


def node_list(conn, row) -> list:
    """The workers taking part in a job over several of them (node 0 first); [] for any other job."""
    if json.loads(row["params"]).get("nodes", 1) <= 1:
        return []
    rows = conn.execute("SELECT * FROM job_nodes WHERE job_id = :id ORDER BY node_rank", {"id": row["id"]}).fetchall()
    return [{"rank": r["node_rank"], "host": r["host"], "device": r["device"], "processes": r["processes"],
             "joined": _iso(r["joined"]), "heartbeat": _iso(r["heartbeat"]), "finished": _iso(r["finished"]),
             "returncode": r["returncode"]} for r in rows]


def _fail(conn, row, error):
    conn.execute("UPDATE jobs SET status = 'failed', finished = :at, error = :error WHERE id = :id AND status IN "
                 "('queued', 'running')", {"at": time.time(), "error": error, "id": row["id"]})


def _fail_dead(site, conn, row, message):
    tail = log_file_tail(jobs_root(site) / str(row["id"]), lines=10)
    _fail(conn, row, message + ("\n" + "\n".join(tail) if tail else ""))
    if row["pid"] and process_alive(row["pid"]):
        signal_group(row["pid"], signal.SIGKILL)  # an orphaned trainer nobody records any more


def _fail_lost(site, conn, row, silent_s):
    """A queued job's worker stopped heartbeating: it was killed, lost its host or its network.
    Its trainer stops by itself (it never outlives its runner, and a runner that comes back finds
    the job over); the job resumes from its last checkpoint in the store."""
    lines = conn.execute("SELECT line FROM log_lines WHERE job_id = :id ORDER BY seq DESC LIMIT 10",
                         {"id": row["id"]}).fetchall()
    tail = "\n".join(r["line"] for r in reversed(lines))
    _fail(conn, row, f"{WORKER_LOST}: no heartbeat from {row['host']} for {silent_s:.0f} s "
                     f"(JOB_LOST_S {float(site.settings['JOB_LOST_S']):g})" + ("\n" + tail if tail else ""))


def reconcile(site, conn):
    """Mark failed every local queued/running job whose runner process is gone, and every queued
    job taken by a worker whose heartbeat is older than JOB_LOST_S. A queued job no worker has
    taken yet waits for one (it can be cancelled)."""
    now = time.time()
    lost_after = float(site.settings["JOB_LOST_S"])
    for row in conn.execute("SELECT * FROM jobs WHERE status IN ('queued', 'running')").fetchall():
        if json.loads(row["spec"] or "{}").get("mode") == "queue":
            if row["host"] is not None and now - (row["heartbeat"] or 0) > lost_after:
                _fail_lost(site, conn, row, now - (row["heartbeat"] or now))
        elif row["runner_pid"] is None:
            if now - row["created"] > QUEUED_TIMEOUT_S:
                _fail_dead(site, conn, row, "the job process never started")
        elif not process_alive(row["runner_pid"], row["runner_start"]):
            _fail_dead(site, conn, row, f"the job process (pid {row['runner_pid']}) ended without reporting: "
                                        "killed, out of memory, or the machine restarted")


def _job_row(conn, job_id):
    row = conn.execute("SELECT * FROM jobs WHERE id = :id", {"id": job_id}).fetchone()
    if row is None:
        raise JobError(f"no job {job_id}", "not_found")
    return row


def get(site, job_id, since=0) -> dict:
    with site.database() as conn:
        reconcile(site, conn)
        return job_dict(conn, _job_row(conn, job_id), since)


def list_jobs(site) -> list:
    with site.database() as conn:
        reconcile(site, conn)
        rows = conn.execute("SELECT * FROM jobs ORDER BY id DESC").fetchall()
        return [job_dict(conn, row, details=False) for row in rows]


def count_by_status(site) -> dict:
    """status -> number of jobs, as the database holds them: a read that changes nothing (for
    /metrics, which must never mark jobs failed or signal processes)."""
    with site.database() as conn:
        rows = conn.execute("SELECT status, COUNT(*) AS n FROM jobs GROUP BY status").fetchall()
        return {row["status"]: row["n"] for row in rows}


def active_job(site):
    """The queued or running job, or None."""
    jobs = [j for j in list_jobs(site) if j["status"] in ACTIVE]
    return jobs[0] if jobs else None


# ---- changing ----

def queue_mode(site) -> bool:
    return bool(site.settings.get("REDIS_URL"))


def _insert(site, conn, data) -> tuple:
    """Insert a queued job; refuses when one is queued or running. Runs in a write transaction, so
    concurrent starts are serialised, and the database's unique index `one_job_not_over` refuses a
    second job that is not over whichever host inserts it. The spec holds margins and the mode,
    no path: the host that runs the job computes those (`plan`)."""
    resuming = isinstance(data, dict) and data.get("resume") is not None
    params = None if resuming else validate_params(site, data)  # 400 before 409
    settings = site.settings
    with write_transaction(conn):
        busy = conn.execute("SELECT id, status FROM jobs WHERE status IN ('queued', 'running')").fetchone()
        if busy:
            raise JobError(f"job {busy['id']} is {busy['status']}: wait for it or cancel it first",
                           "job_running")
        spec = {"mode": "queue" if queue_mode(site) else "local", "margin": float(settings["PROMOTION_MARGIN"]),
                "feedback_margin": float(settings["FEEDBACK_MARGIN"]),
                "unrecognised_margin": float(settings["UNRECOGNISED_MARGIN"])}
        if params is None:
            params, resumed = _resume_params(site, conn, data)
            spec.update(snapshot_job=resumed.get("snapshot_job") or params["resume"], feedback=resumed.get("feedback"),
                        resume_from=resumed.get("mode", "local"))
        job_id = conn.execute("INSERT INTO jobs (status, params, spec, created) "
                              "VALUES ('queued', :params, :spec, :at) RETURNING id",
                              {"params": json.dumps(params), "spec": json.dumps(spec), "at": time.time()}
                              ).fetchone()["id"]
        if spec["mode"] == "local" and spec.get("feedback") is None:
            # taken when it is queued, so later reviews do not change it (a worker takes its own)
            spec["feedback"] = recorded_photos(feedback.snapshot(site, jobs_root(site) / str(job_id),
                                                                 params["include_feedback"]))
            conn.execute("UPDATE jobs SET spec = :spec WHERE id = :id", {"spec": json.dumps(spec), "id": job_id})
    return job_id, params


def job_environment(site) -> dict:
    """The environment of a local job's runner: this site's database, instance folder and
    settings (secrets left out), which it reads back with webapp.settings.settings_for."""
    env = dict(os.environ)
    for name, value in settings_environment(site.settings).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return dict(env, DATABASE_URL=site.database_url, INSTANCE_PATH=str(site.instance))


def _spawn(site, job_id, params) -> subprocess.Popen:
    """Start `python -m webapp.lifecycle.jobrunner` for the job in a new session (its own process group)."""
    job_dir = jobs_root(site) / str(job_id)
    job_dir.mkdir(parents=True, exist_ok=True)
    if params.get("resume"):  # the checkpoint moves on: a job is resumed once
        os.replace(jobs_root(site) / str(params["resume"]) / "resume.pt", job_dir / "resume.pt")
    with open(job_dir / "runner.log", "ab") as log:
        runner = subprocess.Popen(
            [sys.executable, "-m", "webapp.lifecycle.jobrunner", str(job_id)],
            env=job_environment(site), cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
    threading.Thread(target=runner.wait, daemon=True).start()  # reap it when it exits
    return runner


def start(site, data) -> dict:
    """Queue a training job, then spawn its process (local) or put it on the queue for a worker;
    raises JobError (bad input, or one is busy)."""
    if not isinstance(data, dict):
        raise JobError("the request body must be a JSON object")
    with site.database() as conn:
        reconcile(site, conn)
        job_id, params = _insert(site, conn, data)
        if queue_mode(site):
            try:
                jobqueue.enqueue(site.settings["REDIS_URL"], job_id)
            except Exception as error:  # redis' errors (connection, auth, ...) have no common base
                message = f"could not queue the job: {type(error).__name__}: {error}"
                conn.execute("UPDATE jobs SET status = 'failed', finished = :at, error = :error WHERE id = :id",
                             {"at": time.time(), "error": message, "id": job_id})
                raise JobError(message, "spawn_failed") from error
            return job_dict(conn, _job_row(conn, job_id))
        try:
            runner = _spawn(site, job_id, params)
        except OSError as error:
            conn.execute("UPDATE jobs SET status = 'failed', finished = :at, error = :error WHERE id = :id",
                         {"at": time.time(), "error": f"could not start the job process: {error}", "id": job_id})
            raise JobError(f"could not start the job process: {error}", "spawn_failed") from error
        info = process_start(runner.pid)
        conn.execute("UPDATE jobs SET runner_pid = :pid, runner_start = :start WHERE id = :id AND runner_pid IS NULL",
                     {"pid": runner.pid, "start": info[1] if info else None, "id": job_id})
        return job_dict(conn, _job_row(conn, job_id))


def cancel(site, job_id) -> dict:
    """Ask a queued or running job to stop, through the database: its runner polls the row and
    stops the trainer (SIGTERM: it writes a resume checkpoint and exits 3), then records
    `cancelled`. A local job's trainer is also signalled from here at once; a queued job's runs on
    another host, whose pids mean nothing here, and one no worker has taken is cancelled now."""
    with site.database() as conn:
        reconcile(site, conn)
        row = _job_row(conn, job_id)
        if row["status"] not in ACTIVE:
            raise JobError(f"job {job_id} is already {row['status']}", "not_running")
        conn.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = :id", {"id": job_id})
        if json.loads(row["spec"] or "{}").get("mode") == "queue":
            conn.execute("UPDATE jobs SET status = 'cancelled', finished = :at, result = :result "
                         "WHERE id = :id AND status = 'queued' AND host IS NULL",
                         {"at": time.time(), "result": json.dumps({"resumable": False}), "id": job_id})
        elif row["pid"]:
            signal_group(row["pid"], signal.SIGTERM)
        return job_dict(conn, _job_row(conn, job_id))
