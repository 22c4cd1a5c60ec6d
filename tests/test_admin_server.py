"""Against a real gunicorn with 2 workers: racing starts, a finished job's version served by
every worker within 5 s, a SIGKILLed job while the app keeps answering."""

import json
import os
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from admin_support import LONG_JOB, PASSWORD, TINY_JOB, TOKEN, training, wait_for, write_dataset
from conftest import start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("admin-server")
    data = write_dataset(root / "data")
    instance = root / "instance"
    instance.mkdir()
    gunicorn = start_server(instance, tiny_model_dir, workers=2, env_extra={
        "ADMIN_PASSWORD": PASSWORD, "ADMIN_TOKEN": TOKEN, "TRAIN_DATA": str(data), "TRAIN_THREADS": "1",
        "TRAIN_SUITE": "false"})
    base = gunicorn.base
    yield base
    for job in call(base, "GET", "/api/v1/admin/jobs")[1]["jobs"]:
        if job["status"] in ("queued", "running"):
            call(base, "POST", f"/api/v1/admin/jobs/{job['id']}/cancel")
            wait_for(lambda job_id=job["id"]: call(base, "GET", f"/api/v1/admin/jobs/{job_id}")[1]["status"]
                     not in ("queued", "running"), 30, 0.5, "the job to stop")
    gunicorn.stop()


def call(base, method, path, body=None, token=TOKEN):
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_job(base, job_id, timeout=300):
    return wait_for(lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
        call(base, "GET", f"/api/v1/admin/jobs/{job_id}")[1]), timeout, 0.3, f"job {job_id} to end")


def test_refusals_without_credentials(server):
    assert call(server, "GET", "/api/v1/admin/jobs", token=None)[0] == 401
    assert call(server, "POST", "/api/v1/admin/jobs", TINY_JOB, token="guess")[0] == 401
    request = urllib.request.Request(server + "/admin")
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=10)
    assert redirect.value.code == 302 and "/admin/login" in redirect.value.headers["Location"]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_twenty_racing_starts_give_one_202_and_nineteen_409(server):
    barrier, results = threading.Barrier(20), []

    def start():
        barrier.wait()
        results.append(call(server, "POST", "/api/v1/admin/jobs", TINY_JOB))

    threads = [threading.Thread(target=start) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(status for status, _ in results)
    assert statuses == [202] + [409] * 19, statuses
    job = next(body for status, body in results if status == 202)
    assert all(body["error"]["code"] == "job_running" for status, body in results if status == 409)
    assert len(call(server, "GET", "/api/v1/admin/jobs")[1]["jobs"]) == 1

    finished = wait_job(server, job["id"])
    assert finished["status"] == "succeeded", finished
    version = finished["version"]
    assert call(server, "GET", "/api/v1/admin/versions")[1]["active"] == version  # passed the gate

    # roll back, then promote again: every worker serves the active version within 5 s
    for target in ("shipped", version):
        assert call(server, "POST", f"/api/v1/admin/versions/{target}/activate")[0] == 200
        changed = time.time()
        expected = "test-1" if target == "shipped" else version
        wait_for(lambda expected=expected: all(served(server) == expected for _ in range(12)), 5, 0.1,
                 f"{expected} everywhere")
        assert time.time() - changed < 5


def served(base):
    with urllib.request.urlopen(base + "/api/v1/model", timeout=10) as response:
        return json.loads(response.read())["version"]


def test_sigkilled_job_fails_and_the_app_keeps_answering(server):
    before = served(server)
    active = call(server, "GET", "/api/v1/admin/versions")[1]["active"]
    status, job = call(server, "POST", "/api/v1/admin/jobs", LONG_JOB)
    assert status == 202
    running = wait_for(lambda: training(
        call(server, "GET", f"/api/v1/admin/jobs/{job['id']}")[1]), 300, 0.3, "the job to run")
    os.kill(running["pid"], signal.SIGKILL)
    killed = time.time()
    failed = wait_job(server, job["id"], timeout=10)
    assert failed["status"] == "failed" and time.time() - killed < 10
    assert "SIGKILL" in failed["error"]
    assert served(server) == before
    assert call(server, "GET", "/api/v1/admin/versions")[1]["active"] == active


def test_a_job_outlives_a_restart_of_the_web_app(tmp_path, tiny_model_dir):
    """The job runs in its own session: stopping gunicorn does not stop it, and the restarted app
    reattaches (reads its progress and end from the database)."""
    data = write_dataset(tmp_path / "data", train_per_class=30, test_per_class=4)
    instance = tmp_path / "instance"
    instance.mkdir()
    env = {"ADMIN_TOKEN": TOKEN, "ADMIN_PASSWORD": PASSWORD, "TRAIN_DATA": str(data), "TRAIN_THREADS": "1",
           "TRAIN_SUITE": "false"}
    server = start_server(instance, tiny_model_dir, env_extra=env)
    base = server.base
    try:
        status, job = call(base, "POST", "/api/v1/admin/jobs", dict(TINY_JOB, epochs=25))
        assert status == 202
        wait_for(lambda: call(base, "GET", f"/api/v1/admin/jobs/{job['id']}")[1]["status"] == "running",
                 300, 0.3, "the job to run")
    finally:
        server.stop()
    server = start_server(instance, tiny_model_dir, env_extra=env)
    base = server.base
    try:
        finished = wait_job(base, job["id"])
        assert finished["status"] == "succeeded", finished
        assert finished["epoch"] == 25 and finished["version"]
        assert call(base, "GET", "/api/v1/admin/versions")[1]["active"] == finished["version"]
    finally:
        server.stop()
