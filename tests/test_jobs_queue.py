"""Training jobs on the queue (REDIS_URL set, a real Redis: conftest's redis_server): a job stays
queued, "waiting for a worker", until a worker (`python -m webapp.lifecycle.worker`, a process
with an instance folder of its own, so a leaked path of the web app's would fail) runs it; cancel
through the database reaches the worker within 5 s; a SIGKILLed worker takes its trainer with it
(PR_SET_PDEATHSIG), its job is failed "worker lost" once its heartbeat is older than JOB_LOST_S,
and a second worker resumes it from the checkpoint in the object store (SeaweedFS: s3_server) to
the weights of a run never interrupted. Cluster mode refuses to start without explicit secrets.
Every server listens on 127.0.0.1 only."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from admin_support import LONG_JOB, TINY_JOB, admin_config, auth_headers, login, training, wait_for, write_dataset
from ml.train.libc import die_with_parent
from webapp import create_app
from webapp.lifecycle import jobqueue, jobs, procs
from webapp.lifecycle.db import database
from webapp.settings import PROJECT_ROOT, SettingsError

SECRET = "a-cluster-wide-secret-key"
HEARTBEAT_S, LOST_S = 0.5, 4.0
DONE = ("succeeded", "failed", "cancelled")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("queue-data"), train_per_class=30, test_per_class=4)


@pytest.fixture
def redis_url(redis_server):
    jobqueue.connect(redis_server.url).flushdb()  # no entry of another test's database
    return redis_server.url


@pytest.fixture
def cluster(tmp_path, tiny_model_dir, dataset, redis_url):
    """The web app (test client, its own instance folder), a database file outside every instance
    folder, and a way to start workers with instance folders of their own."""
    shared = tmp_path / "shared"
    shared.mkdir()
    database_url = f"sqlite:///{shared / 'admin.sqlite3'}"
    config = admin_config(tmp_path / "web", tiny_model_dir, dataset, REDIS_URL=redis_url, DATABASE_URL=database_url,
                          SECRET_KEY=SECRET, JOB_LOST_S=LOST_S, JOB_HEARTBEAT_S=HEARTBEAT_S)
    app = create_app(config)
    workers = []

    def worker(name, **env):
        instance = tmp_path / name
        instance.mkdir(exist_ok=True)
        environ = {k: v for k, v in os.environ.items() if k not in ("INSTANCE_PATH", "MODEL_STORE_URL")}
        environ.update(REDIS_URL=redis_url, DATABASE_URL=database_url, INSTANCE_PATH=str(instance),
                       MODEL_DIR=str(tiny_model_dir), TRAIN_DATA=str(dataset), TRAIN_THREADS="1", TRAIN_SUITE="false",
                       TRAIN_DEVICE="cpu", WORKER_NAME=name, JOB_HEARTBEAT_S=str(HEARTBEAT_S), **env)
        log = open(tmp_path / f"{name}.log", "ab")
        process = subprocess.Popen([sys.executable, "-m", "webapp.lifecycle.worker"], cwd=PROJECT_ROOT, env=environ,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        process.instance, process.log_path = instance, tmp_path / f"{name}.log"
        workers.append((process, log))
        return process

    client = app.test_client()

    def api(method, path, **kwargs):
        return getattr(client, method)("/api/v1/admin" + path, headers=auth_headers(), **kwargs)

    app.api, app.worker, app.client_ = api, worker, client
    yield app
    for process, log in workers:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # RQ's shutdown; a second one does not wait for a job
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def job_of(app, job_id):
    return app.api("get", f"/jobs/{job_id}").json


def wait_status(app, job_id, statuses=DONE, timeout=300):
    return wait_for(lambda: (lambda j: j if j["status"] in statuses else None)(job_of(app, job_id)),
                    timeout, 0.2, f"job {job_id} to reach {statuses}")


def done_digest(job):
    return [m["weights_digest"] for m in job["metrics"] if m["type"] == "done"]


def test_a_queued_job_waits_for_a_worker_and_runs_there_with_no_path_of_the_web_host(cluster, redis_url, monkeypatch):
    signalled = []
    monkeypatch.setattr(jobs, "signal_group", lambda *a: signalled.append(a))
    response = cluster.api("post", "/jobs", json=TINY_JOB)
    assert response.status_code == 202, response.json
    job = response.json
    assert job["status"] == "queued" and job["waiting_for_worker"] is True and job["host"] is None
    entries = jobqueue.training_queue(redis_url).get_jobs()
    assert len(entries) == 1 and entries[0].args == (job["id"],)
    assert entries[0].timeout == jobqueue.JOB_TIMEOUT == -1  # RQ's 180 s default would cut a long training

    login(cluster.client_)
    page = cluster.client_.get(f"/admin/jobs/{job['id']}").get_data(as_text=True)
    assert "Waiting for a worker" in page
    time.sleep(2)
    assert job_of(cluster, job["id"])["status"] == "queued"  # no local process took it
    assert cluster.api("post", "/jobs", json=TINY_JOB).status_code == 409

    worker = cluster.worker("worker-a")
    done = wait_status(cluster, job["id"])
    assert done["status"] == "succeeded", (done, worker.log_path.read_text()[-3000:])
    assert done["host"] == "worker-a" and done["device"] == "cpu" and done["processes"] == 1
    assert done["heartbeat"] and done["version"] and done["waiting_for_worker"] is False
    page = cluster.client_.get(f"/admin/jobs/{job['id']}").get_data(as_text=True)
    assert 'id="job-host">worker-a<' in page
    # the job ran in the worker's instance folder, from a row that names no path of the web host
    web_instance = cluster.instance_path
    assert (worker.instance / "jobs" / str(job["id"]) / "train.log").is_file()
    assert not os.path.exists(os.path.join(web_instance, "jobs", str(job["id"])))
    with database(cluster.config["DATABASE_URL"]) as conn:
        row = conn.execute("SELECT params, spec FROM jobs WHERE id = :id", {"id": job["id"]}).fetchone()
    assert "/" not in row["params"] + row["spec"], row  # no path at all
    assert signalled == []


def test_cancel_reaches_the_worker_within_5_s_through_the_database(cluster, monkeypatch):
    signalled = []
    monkeypatch.setattr(jobs, "signal_group", lambda *a: signalled.append(a))
    cluster.worker("worker-a")
    job = cluster.api("post", "/jobs", json=LONG_JOB).json
    running = wait_for(lambda: training(job_of(cluster, job["id"])), 300, 0.2, "the job to run on the worker")
    assert running["host"] == "worker-a" and running["pid"]
    asked = time.time()
    assert cluster.api("post", f"/jobs/{job['id']}/cancel").status_code == 202
    done = wait_status(cluster, job["id"], timeout=10)
    assert done["status"] == "cancelled" and time.time() - asked < 5, done
    assert signalled == []  # the web host never signals a pid of the worker's host
    wait_for(lambda: not procs.process_alive(running["pid"]), 5, 0.1, "the trainer to stop")


def test_a_job_no_worker_took_is_cancelled_at_once(cluster):
    job = cluster.api("post", "/jobs", json=TINY_JOB).json
    done = cluster.api("post", f"/jobs/{job['id']}/cancel").json
    assert done["status"] == "cancelled" and done["result"] == {"resumable": False}
    assert cluster.api("post", "/jobs", json=TINY_JOB).status_code == 202  # the slot is free


def test_a_lost_worker_fails_its_job_and_another_worker_resumes_it_to_the_same_weights(cluster, s3_server,
                                                                                       monkeypatch):
    store_url = s3_server.url_for("queue-test")
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    cluster.config["MODEL_STORE_URL"] = store_url
    store_env = dict(s3_server.env, MODEL_STORE_URL=store_url)
    params = dict(TINY_JOB, epochs=8, seed=5)

    first = cluster.worker("worker-a", **store_env)
    job = cluster.api("post", "/jobs", json=params).json
    key = jobs.checkpoint_key(job["id"])
    client = s3_server.client()

    def checkpointed():  # an epoch's checkpoint is in the store, and the run goes on
        current = job_of(cluster, job["id"])
        epochs = [m for m in current["metrics"] if m["type"] == "epoch"]
        stored = client.list_objects_v2(Bucket=s3_server.bucket, Prefix="queue-test/" + key).get("KeyCount", 0)
        return current if len(epochs) >= 2 and stored and current["status"] == "running" else None
    running = wait_for(checkpointed, 300, 0.1, "an epoch checkpoint in the store")
    assert running["epoch"] < params["epochs"], "the job ended before the worker could be killed: make it longer"
    trainer = running["pid"]
    first.kill()  # SIGKILL: no goodbye, no last heartbeat
    killed = time.time()
    wait_for(lambda: not procs.process_alive(trainer), 3, 0.05, "the trainer to die with its worker")
    assert time.time() - killed < 3

    lost = wait_status(cluster, job["id"], timeout=LOST_S + 10)
    assert lost["status"] == "failed" and lost["error"].startswith("worker lost"), lost
    assert "worker-a" in lost["error"] and time.time() - killed < LOST_S + 5

    second = cluster.worker("worker-b", **store_env)
    resumed = cluster.api("post", "/jobs", json={"resume": job["id"]})
    assert resumed.status_code == 202, resumed.json
    done = wait_status(cluster, resumed.json["id"])
    assert done["status"] == "succeeded", (done, second.log_path.read_text()[-3000:])
    assert done["host"] == "worker-b"
    record = [m for m in done["metrics"] if m["type"] == "resumed"]
    assert record and record[0]["epoch"] >= 3  # from an epoch's end, not from the start
    assert cluster.api("post", "/jobs", json={"resume": job["id"]}).status_code == 409  # moved on: resumed once

    # the same parameters never interrupted, on the same worker: the same weights
    reference = cluster.api("post", "/jobs", json=params).json
    uninterrupted = wait_status(cluster, reference["id"])
    assert uninterrupted["status"] == "succeeded", uninterrupted
    assert done_digest(done) == done_digest(uninterrupted) and len(done_digest(done)) == 1


def test_the_trainer_dies_with_its_runner(tmp_path):
    """PR_SET_PDEATHSIG as the runner sets it (preexec_fn): SIGKILL the parent, the child follows."""
    parent = subprocess.Popen([sys.executable, "-c", (
        "import os, signal, subprocess, sys, time\n"
        "from ml.train.libc import die_with_parent\n"
        "me = os.getpid()\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'],\n"
        "                         preexec_fn=lambda: die_with_parent(signal.SIGKILL, me))\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n")], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert procs.process_alive(child)
    parent.kill()
    parent.wait()
    killed = time.time()
    wait_for(lambda: not procs.process_alive(child), 2, 0.02, "the child to die with its parent")
    assert time.time() - killed < 2
    assert die_with_parent(0)  # available here (Linux, glibc); 0 clears it again


@pytest.mark.parametrize("name", ["DATABASE_URL", "REDIS_URL", "MODEL_STORE_URL"])
def test_cluster_mode_refuses_to_start_without_explicit_secrets(tmp_path, tiny_model_dir, dataset, name):
    url = {"DATABASE_URL": f"sqlite:///{tmp_path}/x.sqlite3", "REDIS_URL": "redis://127.0.0.1:9/0",
           "MODEL_STORE_URL": "s3://bucket/prefix"}[name]
    config = admin_config(tmp_path, tiny_model_dir, dataset, **{name: url})
    with pytest.raises(SettingsError, match=f"cluster mode \\({name} set\\): set SECRET_KEY explicitly"):
        create_app(config)
    no_admin = dict(config, SECRET_KEY=SECRET, ADMIN_TOKEN=None, ADMIN_PASSWORD=None)
    with pytest.raises(SettingsError, match=r"set ADMIN_TOKEN \(or ADMIN_PASSWORD\) explicitly"):
        create_app(no_admin)
    assert create_app(dict(no_admin, ADMIN_TOKEN="t" * 24)).config["SECRET_KEY"] == SECRET
    assert create_app(admin_config(tmp_path / "one-host", tiny_model_dir, dataset)).config["SECRET_KEY"]  # no URL


def test_a_worker_refuses_to_start_without_a_queue(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    result = subprocess.run([sys.executable, "-m", "webapp.lifecycle.worker"], cwd=PROJECT_ROOT, capture_output=True,
                            text=True, timeout=120, env=dict(env, INSTANCE_PATH=str(tmp_path / "w")))
    assert result.returncode != 0 and "REDIS_URL is not set" in result.stderr


def test_the_job_json_says_where_a_local_job_runs(tmp_path, tiny_model_dir, dataset):
    """REDIS_URL unset: the web app's own runner records its host, device and processes too."""
    app = create_app(admin_config(tmp_path, tiny_model_dir, dataset))
    client = app.test_client()
    job = client.post("/api/v1/admin/jobs", json=TINY_JOB, headers=auth_headers()).json
    assert job["waiting_for_worker"] is False
    done = wait_for(lambda: (lambda j: j if j["status"] in DONE else None)(
        client.get(f"/api/v1/admin/jobs/{job['id']}", headers=auth_headers()).json), 300, 0.3, "the job")
    assert done["status"] == "succeeded" and done["host"] and done["device"] == "cpu" and done["processes"] == 1
    assert json.loads(json.dumps(done))["heartbeat"]
