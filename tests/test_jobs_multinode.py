"""A job over several training workers (`nodes: 2`, queue mode): two worker processes with
instance folders of their own on 127.0.0.1, a real Redis (redis_server) and torchrun's static
rendezvous with the gloo backend on the CPU. The worker that takes the job is node 0 (global rank
0: it writes the model, the version and the job's rows); the other takes the follower entry and
runs rank 1. With only one worker the job fails with a clear error once JOB_NODES_WAIT_S passes.
A local job (no REDIS_URL) refuses nodes above 1."""

import json
import threading
import time
from types import SimpleNamespace

import pytest

from admin_support import LONG_JOB, TINY_JOB, admin_config, auth_headers, login, training, wait_for
from test_jobs_queue import cluster, dataset, job_of, redis_url, wait_status  # noqa: F401 (fixtures)
from webapp import create_app
from webapp.lifecycle import jobqueue, jobs
from webapp.lifecycle import nodes
from webapp.lifecycle.db import connect, database, sqlite_url


def test_a_two_node_job_runs_on_two_workers_and_node_0_writes_the_version(cluster):  # noqa: F811
    first = cluster.worker("worker-a")
    second = cluster.worker("worker-b")
    response = cluster.api("post", "/jobs", json=dict(TINY_JOB, nodes=2))
    assert response.status_code == 202, response.json
    job = response.json
    assert job["params"]["nodes"] == 2

    done = wait_status(cluster, job["id"], timeout=240)
    logs = first.log_path.read_text()[-3000:] + second.log_path.read_text()[-3000:]
    assert done["status"] == "succeeded", (done, logs)
    assert done["version"] and done["rendezvous"].startswith("127.0.0.1:")
    nodes = done["nodes"]
    assert [n["rank"] for n in nodes] == [0, 1] and all(n["returncode"] == 0 and n["finished"] for n in nodes)
    assert nodes[0]["host"] == done["host"] and {n["host"] for n in nodes} == {"worker-a", "worker-b"}
    start = [m for m in done["metrics"] if m["type"] == "start"]
    assert start and start[0]["world_size"] == 2

    # rank 1 trained in the other worker's own instance folder, on the same weights as rank 0
    follower = first if nodes[1]["host"] == "worker-a" else second
    events = (follower.instance / "jobs" / str(job["id"]) / "events.jsonl").read_text().splitlines()
    rank_1 = [json.loads(line) for line in events if '"done"' in line]
    rank_0 = [m for m in done["metrics"] if m["type"] == "done"]
    assert [r["rank"] for r in rank_1] == [1] and [r["rank"] for r in rank_0] == [0]
    assert rank_1[0]["weights_digest"] == rank_0[0]["weights_digest"]
    assert not (follower.instance / "jobs" / str(job["id"]) / "model").exists()  # node 0 keeps the model
    with database(cluster.config["DATABASE_URL"]) as conn:
        lines = [r["line"] for r in conn.execute("SELECT line FROM log_lines WHERE job_id = :id", {"id": job["id"]})]
    assert any(line.startswith("all nodes joined: node 0 on worker-") for line in lines), lines[:20]

    login(cluster.client_)
    page = cluster.client_.get(f"/admin/jobs/{job['id']}").get_data(as_text=True)
    assert 'id="job-nodes"' in page and "node 1 on <strong>" in page
    assert 'name="nodes"' in cluster.client_.get("/admin/jobs/new").get_data(as_text=True)  # queue mode only


def test_a_two_node_job_with_one_worker_fails_clearly_after_the_wait(cluster, redis_url):  # noqa: F811
    cluster.worker("worker-a", JOB_NODES_WAIT_S="3")
    job = cluster.api("post", "/jobs", json=dict(TINY_JOB, nodes=2)).json
    done = wait_status(cluster, job["id"], timeout=120)
    assert done["status"] == "failed", done
    assert done["error"].startswith("only 1 of 2 nodes joined within 3 s (JOB_NODES_WAIT_S)"), done["error"]
    assert [n["host"] for n in done["nodes"]] == ["worker-a"]
    entries = jobqueue.training_queue(redis_url).get_jobs()
    assert entries == []  # the follower entry nobody took left the queue with the job
    assert cluster.api("post", "/jobs", json=TINY_JOB).status_code == 202  # the slot is free


@pytest.mark.parametrize("nodes, message", [(9, "nodes must be between 1 and 8"), ("two", "nodes must be a whole"),
                                            (2, "nodes above 1 needs the job queue (REDIS_URL)")])
def test_nodes_is_checked_and_a_local_job_runs_on_one_host_only(tmp_path, tiny_model_dir, dataset,  # noqa: F811
                                                                  nodes, message):
    app = create_app(admin_config(tmp_path, tiny_model_dir, dataset))
    client = app.test_client()
    response = client.post("/api/v1/admin/jobs", json=dict(TINY_JOB, nodes=nodes), headers=auth_headers())
    assert response.status_code == 400 and message in json.dumps(response.json), response.json
    login(client)
    assert 'name="nodes"' not in client.get("/admin/jobs/new").get_data(as_text=True)


def test_a_node_runs_torchrun_with_a_static_rendezvous_at_node_0():
    command = jobs.launcher({"TRAIN_NPROC": 2}, jobs.Node(3, 1, "10.0.0.5:29400", 60))
    assert command[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--nnodes", "3", "--node-rank", "1",
                           "--master-addr", "10.0.0.5", "--master-port", "29400", "--rdzv-conf", "timeout=60",
                           "-m", "ml.train"]
    assert jobs.launcher({"TRAIN_NPROC": 1})[1:] == ["-m", "ml.train"]


def test_a_cancel_stops_every_node_of_a_two_node_job(cluster):  # noqa: F811
    cluster.worker("worker-a")
    cluster.worker("worker-b")
    job = cluster.api("post", "/jobs", json=dict(LONG_JOB, nodes=2)).json
    running = wait_for(lambda: (lambda j: j if training(j) and len(j["nodes"]) == 2 else None)(
        job_of(cluster, job["id"])), 240, 0.2, "both nodes to train")
    asked = time.time()
    assert cluster.api("post", f"/jobs/{job['id']}/cancel").status_code == 202
    done = wait_status(cluster, job["id"], timeout=30)
    assert done["status"] == "cancelled" and time.time() - asked < 5, done
    ended = wait_for(lambda: (lambda j: j if all(n["finished"] for n in j["nodes"]) else None)(
        job_of(cluster, job["id"])), 30, 0.2, "the follower to stop")
    assert [n["rank"] for n in ended["nodes"]] == [0, 1], running


def lead_of_job(tmp_path, lost_s):
    """Node 0 of job 1 over two nodes, on a SQLite database with node 1's row still running."""
    url = sqlite_url(tmp_path)
    conn = connect(url)
    now = time.time()
    for rank in (0, 1):
        conn.execute("INSERT INTO job_nodes (job_id, node_rank, host, joined, heartbeat) "
                     "VALUES (1, :rank, :host, :now, :now)", {"rank": rank, "host": f"worker-{rank}", "now": now})
    settings = {"JOB_NODES_WAIT_S": 10, "JOB_LOST_S": lost_s, "JOB_HEARTBEAT_S": 1}
    runner = SimpleNamespace(job_id=1, params={"nodes": 2}, site=SimpleNamespace(settings=settings), conn=conn)
    return nodes.Lead(runner), url


def end_node_1(url, code, after_s):
    def end():
        time.sleep(after_s)
        with database(url) as conn:
            conn.execute("UPDATE job_nodes SET finished = :at, returncode = :code WHERE node_rank = 1",
                         {"at": time.time(), "code": code})
    threading.Thread(target=end, daemon=True).start()


def test_node_0_calls_the_job_over_only_once_the_other_node_recorded_its_end(tmp_path):
    lead, url = lead_of_job(tmp_path, lost_s=30)
    end_node_1(url, 0, after_s=1.0)
    began = time.monotonic()
    assert lead.settle() is None
    assert time.monotonic() - began >= 1.0
    assert lead.nodes_rows()[1]["finished"] is not None


def test_a_node_that_ends_with_an_error_after_node_0_succeeded_fails_the_job(tmp_path):
    lead, url = lead_of_job(tmp_path, lost_s=30)
    end_node_1(url, 3, after_s=0.5)
    assert lead.settle() == "node 1 on worker-1 stopped with status 3"


def test_a_node_that_never_ends_holds_node_0_for_job_lost_s_at_most(tmp_path):
    lead, _ = lead_of_job(tmp_path, lost_s=1.5)
    began = time.monotonic()
    failure = lead.settle()  # node 1 sent no heartbeat since it joined: lost after JOB_LOST_S
    assert failure.startswith(jobs.WORKER_LOST + ": node 1 on worker-1 sent no heartbeat")
    assert 1.5 <= time.monotonic() - began < 5
