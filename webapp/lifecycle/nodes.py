"""Jobs over several training workers (`nodes: K` above 1, queue mode only): torchrun across K
hosts, one node per worker.

The worker that takes the job is node 0 (`Lead`, inside its jobrunner.Runner): it picks the
rendezvous endpoint on its own address (WORKER_ADDRESS, else the address it reaches the queue's
host from; WORKER_RDZV_PORT, else a free port), records it in the job's row, starts its torchrun
as node 0 (so global rank 0, which writes the model, is there) and puts K-1 follower entries on the
queue. An idle worker that takes follower entry r (`Follower`) records itself as node r in
`job_nodes`, starts torchrun as node r with the same trainer command built from its own settings
and instance folder, heartbeats into its node row and otherwise writes nothing: node 0 writes the
progress, the model, the version and the job's end as for any job.

Node 0 fails the job with a clear error when the other nodes have not all joined within
JOB_NODES_WAIT_S, or when one stops with an error or stops heartbeating; a follower stops its
trainer when the job's row says cancel or over. Every trainer dies with its worker
(PR_SET_PDEATHSIG), and a rank whose peer died fails at its next collective.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import urlsplit

import sqlalchemy as sa

from ml.train.libc import die_with_parent
from webapp.lifecycle import jobqueue, jobrunner, jobs
from webapp.lifecycle.db import ACTIVE, connect, write_transaction
from webapp.lifecycle.objectstore import StoreError, open_store
from webapp.lifecycle.procs import signal_group

SIOCGIFADDR = 0x8915  # linux/sockios.h
NODE_BEAT = "UPDATE job_nodes SET heartbeat = :now WHERE job_id = :id AND node_rank = {rank}"


def route_address(url: str) -> str:
    """This host's address on the route to `url`'s host (a UDP "connect" sends nothing): the
    address a worker on another host most likely reaches this one at, when WORKER_ADDRESS is unset."""
    parts = urlsplit(url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((parts.hostname or "127.0.0.1", parts.port or 6379))
        return probe.getsockname()[0]


def interface_of(address: str):
    """The name of this host's network interface holding IPv4 `address`, or None (not Linux, or no
    such interface): ioctl SIOCGIFADDR on each interface."""
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address on it
            if socket.inet_ntoa(answer[20:24]) == address:
                return name
    return None


def trainer_environment(address: str) -> dict:
    """The trainer's environment: gloo finds its own address by resolving the host name, and where
    that fails (or names another interface) it binds to loopback, which the other hosts cannot
    reach; so unless the operator chose, it binds to the interface of the address the other
    workers reach this one at. NCCL's own choice skips loopback and is left alone."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", ML_TRAIN_DIE_WITH_PARENT="1")  # torchrun's ranks die with it
    if "GLOO_SOCKET_IFNAME" not in env:
        interface = interface_of(address)
        if interface:
            env["GLOO_SOCKET_IFNAME"] = interface
    return env


def node_address(settings) -> str:
    """The address the other workers reach this one at: WORKER_ADDRESS, else the route to the queue."""
    return settings.get("WORKER_ADDRESS") or route_address(settings["REDIS_URL"])


def free_port(address: str) -> int:
    """A port free on `address` now; torchrun's node 0 binds it a moment later (one job at a time
    runs on a worker, so only another program could take it meanwhile)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def node_columns(settings) -> dict:
    return {"host": jobrunner.host_name(settings), "device": str(settings.get("TRAIN_DEVICE") or "auto"),
            "processes": int(settings["TRAIN_NPROC"]), "joined": time.time()}


def append_log(job_dir, line: str):
    """A line of the runner's own in the job's train.log, beside the trainer's (both append)."""
    with open(job_dir / "train.log", "a") as log:
        log.write(line + "\n")


class Lead:
    """Node 0 of a job over several workers: the runner that took the job."""

    def __init__(self, runner):
        self.runner, self.job_id = runner, runner.job_id
        settings = runner.site.settings
        self.nodes, self.wait_s = int(runner.params["nodes"]), float(settings["JOB_NODES_WAIT_S"])
        self.lost_s, self.beat_s = float(settings["JOB_LOST_S"]), float(settings["JOB_HEARTBEAT_S"])
        self.endpoint, self.entries, self.deadline, self.joined, self.beaten = None, [], None, False, 0.0
        self.address = None

    def open_rendezvous(self) -> jobs.Node:
        """Pick the endpoint and record it with node 0's row; OSError when the address is not this host's."""
        settings = self.runner.site.settings
        self.address = address = node_address(settings)
        port = int(settings.get("WORKER_RDZV_PORT") or 0) or free_port(address)
        self.endpoint = f"{address}:{port}"
        conn = self.runner.conn
        with write_transaction(conn):
            conn.execute("UPDATE jobs SET rendezvous = :endpoint WHERE id = :id",
                         {"endpoint": self.endpoint, "id": self.job_id})
            conn.execute("INSERT INTO job_nodes (job_id, node_rank, host, device, processes, joined, heartbeat) "
                         "VALUES (:id, 0, :host, :device, :processes, :joined, :joined)",
                         dict(node_columns(settings), id=self.job_id))
        return jobs.Node(self.nodes, 0, self.endpoint, self.wait_s)

    def call_followers(self):
        """Put the other nodes' entries on the queue (after node 0's torchrun started, so its
        store is up when they come); a queue error fails the job."""
        self.deadline = time.monotonic() + self.wait_s
        append_log(self.runner.job_dir, f"node 0 of {self.nodes} on {jobrunner.host_name(self.runner.site.settings)}:"
                                        f" rendezvous at {self.endpoint}; waiting up to {self.wait_s:g} s for "
                                        f"{self.nodes - 1} more worker(s)")
        try:
            self.entries = jobqueue.enqueue_followers(self.runner.site.settings["REDIS_URL"], self.job_id, self.nodes)
        except Exception as error:  # redis' errors have no common base
            self.runner.failure = f"could not queue the job's other nodes: {type(error).__name__}: {error}"

    def nodes_rows(self) -> list:
        return self.runner.conn.execute("SELECT * FROM job_nodes WHERE job_id = :id ORDER BY node_rank",
                                        {"id": self.job_id}).fetchall()

    def check(self):
        """None while the job may go on; else why node 0 gives it up: the other nodes did not all
        come within JOB_NODES_WAIT_S, or one of them stopped with an error or its heartbeat."""
        now = time.time()
        if now - self.beaten >= self.beat_s:
            self.beaten = now
            self.runner.conn.execute(NODE_BEAT.format(rank=0), {"now": now, "id": self.job_id})
        rows = self.nodes_rows()
        if not self.joined:
            if len(rows) >= self.nodes:
                self.joined = True
                append_log(self.runner.job_dir, "all nodes joined: " + ", ".join(
                    f"node {r['node_rank']} on {r['host']}" for r in rows))
            elif self.deadline is not None and time.monotonic() > self.deadline:
                return (f"only {len(rows)} of {self.nodes} nodes joined within {self.wait_s:g} s (JOB_NODES_WAIT_S): "
                        f"a job with nodes: {self.nodes} needs {self.nodes - 1} more idle training worker(s) "
                        "taking jobs from the queue; start more workers or ask for fewer nodes")
        if self.runner.term_sent_at is not None:
            return None  # cancelling: the followers stop too, and how they end is no failure
        return self.follower_failure(rows, now)

    def follower_failure(self, rows, now):
        for r in rows[1:]:
            where = f"node {r['node_rank']} on {r['host']}"
            if r["finished"] is not None and r["returncode"] != 0:
                return f"{where} stopped with status {r['returncode']}" + (f": {r['error']}" if r["error"] else "")
            silent_s = now - (r["heartbeat"] or r["joined"])
            if r["finished"] is None and silent_s > self.lost_s:
                return f"{jobs.WORKER_LOST}: {where} sent no heartbeat for {silent_s:.0f} s"
        return None

    def settle(self):
        """Node 0's trainer exited 0: wait for the other nodes to record their end before the job
        is called over, so a succeeded job never shows a node still running (their trainers leave
        the same collective, so this takes about one poll period of the followers: the CI run that
        did not wait saw node 1 unfinished after "succeeded"). None, or why the job fails: a node
        stopped with an error, or went silent for JOB_LOST_S. A node still running after JOB_LOST_S
        does not hold the job: node 0's model is whole, and the job's end stops that node's trainer."""
        deadline = time.monotonic() + self.lost_s
        while True:
            rows = self.nodes_rows()
            failure = self.follower_failure(rows, time.time())
            if failure or all(r["finished"] is not None for r in rows[1:]) or time.monotonic() > deadline:
                return failure
            time.sleep(jobrunner.POLL_S)

    def close(self, returncode):
        """The job is over: node 0's row says how it ended; entries nobody took leave the queue."""
        self.runner.conn.execute("UPDATE job_nodes SET finished = :at, returncode = :code "
                                 "WHERE job_id = :id AND node_rank = 0",
                                 {"at": time.time(), "code": returncode, "id": self.job_id})
        try:
            jobqueue.withdraw(self.runner.site.settings["REDIS_URL"], self.entries)
        except Exception as error:  # the queue away: a worker taking one later finds the job over
            print(f"job {self.job_id}: follower entries not withdrawn: {error}", file=sys.stderr, flush=True)


class Follower:
    """Node `rank` > 0 of job `job_id`, run by a worker that took the follower entry."""

    def __init__(self, site, job_id: int, rank: int):
        self.site, self.job_id, self.rank = site, int(job_id), int(rank)
        self.conn = connect(site.database_url)
        self.job_dir = jobs.jobs_root(site) / str(self.job_id)
        self.trainer = None

    def job_row(self):
        return self.conn.execute("SELECT status, params, spec, rendezvous, cancel_requested FROM jobs WHERE id = :id",
                                 {"id": self.job_id}).fetchone()

    def claim(self) -> bool:
        """Record this worker as the node; False when another took it (the primary key refuses)."""
        try:
            self.conn.execute("INSERT INTO job_nodes (job_id, node_rank, host, device, processes, joined, heartbeat) "
                              "VALUES (:id, :rank, :host, :device, :processes, :joined, :joined)",
                              dict(node_columns(self.site.settings), id=self.job_id, rank=self.rank))
        except sa.exc.IntegrityError:
            return False
        return True

    def run(self) -> int:
        row = self.job_row()
        if row is None or row["status"] not in ACTIVE or not row["rendezvous"] or row["cancel_requested"]:
            print(f"job {self.job_id} node {self.rank}: the job is over; nothing to do", flush=True)
            return 0
        if not self.claim():
            return 0
        beat = jobrunner.Heartbeat(self.site.database_url, self.job_id, self.site.settings["JOB_HEARTBEAT_S"],
                                   statement=NODE_BEAT.format(rank=self.rank)).start()
        error = None
        try:
            returncode = self.train(row)
        except (OSError, StoreError, ValueError, KeyError) as failure:
            returncode, error = 1, f"could not prepare or start: {type(failure).__name__}: {failure}"
        finally:
            beat.stop()
        self.conn.execute("UPDATE job_nodes SET finished = :at, returncode = :code, error = :error "
                          "WHERE job_id = :id AND node_rank = :rank",
                          {"at": time.time(), "code": returncode, "error": error, "id": self.job_id, "rank": self.rank})
        shutil.rmtree(self.job_dir / "model", ignore_errors=True)  # only node 0 keeps what it trained
        (self.job_dir / "resume.pt").unlink(missing_ok=True)
        self.conn.close()
        return 0 if returncode == 0 else 1

    def train(self, row) -> int:
        """This node's torchrun, from this host's settings and instance folder; its exit status."""
        params, spec, settings = json.loads(row["params"]), json.loads(row["spec"]), self.site.settings
        self.job_dir.mkdir(parents=True, exist_ok=True)
        photos = jobs.user_photos(self.site, spec, self.job_id, params)
        if params.get("resume"):  # every rank loads the checkpoint; node 0 moved it to this job's key
            store = open_store(settings.get("MODEL_STORE_URL"), self.site.instance)
            store.get_file(jobs.checkpoint_key(self.job_id), self.job_dir / "resume.pt")
        node = jobs.Node(int(params["nodes"]), self.rank, row["rendezvous"], float(settings["JOB_NODES_WAIT_S"]))
        plan = jobs.plan(self.site, self.job_id, params, spec, photos, node=node)
        worker_pid = os.getpid()
        append_log(self.job_dir, f"node {self.rank} of {node.nodes}: rendezvous at {node.endpoint}")
        with open(self.job_dir / "train.log", "ab") as log:
            self.trainer = subprocess.Popen(
                plan.command, cwd=plan.cwd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=trainer_environment(node_address(settings)),
                preexec_fn=lambda: die_with_parent(signal.SIGKILL, worker_pid))
        print(f"job {self.job_id}: node {self.rank} of {node.nodes} runs, rendezvous at {node.endpoint}", flush=True)
        return self.watch()

    def watch(self) -> int:
        """Wait for the trainer; a cancel or the job's end (in its row) stops it as node 0 stops
        its own: SIGTERM, then SIGKILL after the grace period."""
        term_sent_at = None
        while (returncode := self.trainer.poll()) is None:
            row = self.job_row()
            if row["status"] not in ACTIVE or row["cancel_requested"]:
                now = time.monotonic()
                if term_sent_at is None:
                    term_sent_at = now
                    signal_group(self.trainer.pid, signal.SIGTERM)
                elif now - term_sent_at > jobrunner.CANCEL_GRACE_S:
                    signal_group(self.trainer.pid, signal.SIGKILL)
            time.sleep(jobrunner.POLL_S)
        return returncode
