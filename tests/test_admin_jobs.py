"""Training jobs end to end on tiny runs: lifecycle with the promotion gate, promotion, rollback
and the version named by predictions; refusals; cancel and resume; killed processes."""

import io
import os
import signal
import time

import pytest

from admin_support import (LONG_JOB, TINY_JOB, admin_config, auth_headers, csrf_token, login, training, wait_for,
                           write_dataset)
from conftest import image_bytes
from ml.predict.predictor import Predictor
from webapp import create_app
from webapp.lifecycle import jobs, procs
from webapp.lifecycle.site import Site


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("admin-data"))


@pytest.fixture
def admin_app(tmp_path, tiny_model_dir, dataset):
    app = create_app(admin_config(tmp_path, tiny_model_dir, dataset))
    yield app
    stop_active_job(app)


def stop_active_job(app):
    """Leave no training process behind a test."""
    site = Site.of(app)
    job = jobs.active_job(site)
    if job:
        jobs.cancel(site, job["id"])
        wait_for(lambda: jobs.active_job(site) is None, 30, what="the job to stop")


@pytest.fixture
def api(admin_app):
    client = admin_app.test_client()

    def call(method, path, **kwargs):
        return getattr(client, method)("/api/v1/admin" + path, headers=auth_headers(), **kwargs)
    call.client = client
    return call


def wait_job(api, job_id, statuses=("succeeded", "failed", "cancelled"), timeout=300):
    return wait_for(lambda: (lambda j: j if j["status"] in statuses else None)(api("get", f"/jobs/{job_id}").json),
                    timeout, 0.3, f"job {job_id} to reach {statuses}")


def model_version(client):
    return client.get("/api/v1/model").json["version"]


def served_version(client):
    response = client.post("/api/v1/predict", data={"image": (io.BytesIO(image_bytes()), "a.jpg")})
    assert response.status_code == 200
    return response.json


@pytest.mark.parametrize("body, message", [
    ({"preset": "huge"}, "preset must be one of"),
    ({"epochs": 0}, "epochs must be between"),
    ({"epochs": 2.5}, "epochs must be a whole number"),
    ({"epochs": True}, "epochs must be a number"),
    ({"lr": "fast"}, "lr must be a number"),
    ({"batch_size": 100000}, "batch_size must be between"),
    ({"limit": 2}, "limit must be between"),
    ({"data": "../../etc"}, "data must be one of"),
    ({"data": ["default"]}, "data must be one of"),
    ({"epoch": 1}, "unknown field"),
    ([1, 2], "JSON object"),
])
def test_bad_job_requests_are_refused_and_start_nothing(api, body, message):
    response = api("post", "/jobs", json=body)
    assert response.status_code == 400
    assert message in response.json["error"]["message"]
    assert api("get", "/jobs").json["jobs"] == []


def test_non_json_body_is_refused(api):
    response = api("post", "/jobs", data="preset=seed", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400


def test_unknown_job_and_version_are_404(api):
    assert api("get", "/jobs/99").status_code == 404
    assert api("post", "/jobs/99/cancel").status_code == 404
    assert api("post", "/versions/nope/activate").status_code == 404
    assert api("post", "/versions/..%2F..%2Fetc/activate").status_code == 404


def test_job_lifecycle_gate_promotion_and_rollback(api, admin_app, tmp_path, tiny_model_dir, dataset):
    client = api.client
    assert served_version(client)["model"]["version"] == "test-1"  # the shipped (here: tiny) model
    response = api("post", "/jobs", json=TINY_JOB)
    assert response.status_code == 202
    job = response.json
    assert job["status"] in ("queued", "running") and job["params"]["preset"] == "seed"

    # a second web app on the same instance folder (a restarted server, another worker) sees it all
    other = create_app(admin_config(tmp_path, tiny_model_dir, dataset)).test_client()
    progress = wait_for(lambda: [m for m in other.get(f"/api/v1/admin/jobs/{job['id']}", headers=auth_headers())
                                 .json["metrics"] if m["type"] == "step"], 300, 0.2, "progress rows")
    assert progress[0]["loss"] > 0 and progress[0]["total_steps"] == 6
    job = wait_job(api, job["id"])
    assert job["status"] == "succeeded", job
    assert [m["type"] for m in job["metrics"]].count("epoch") == 1
    assert job["progress"] == 1.0 and job["epoch"] == 1 and job["duration_s"] > 0
    assert any("epoch 1/1" in line for line in job["log_tail"])
    first = job["version"]
    assert job["result"]["promoted"] is True  # the tiny shipped model has no accuracy to beat

    versions = api("get", "/versions").json
    assert versions["active"] == first
    assert [v["id"] for v in versions["versions"]] == [first, "shipped"]
    stored = versions["versions"][0]
    assert stored["active"] and stored["job"] == job["id"] and stored["metrics"]["accuracy"] is not None
    assert {"model.safetensors", "card.json"} <= set(os.listdir(stored["path"]))
    assert not (tmp_path / "instance" / "jobs" / str(job["id"]) / "model").exists()

    wait_for(lambda: model_version(client) == first, 5, 0.1, "the new version to serve")
    answer = served_version(client)
    assert answer["model"]["version"] == first
    expected = Predictor(stored["path"]).predict([image_bytes()])[0]
    assert answer["predictions"][0]["label"] == expected["label"]

    # the gate holds back a version below the active one's accuracy minus the margin
    admin_app.config["PROMOTION_MARGIN"] = -1.0  # demands accuracy >= active + 1: impossible
    job = wait_job(api, api("post", "/jobs", json=dict(TINY_JOB, seed=1)).json["id"])
    second = job["version"]
    assert job["status"] == "succeeded" and job["result"]["promoted"] is False
    assert job["result"]["active_before"] == first
    assert api("get", "/versions").json["active"] == first
    time.sleep(1.1)
    assert served_version(client)["model"]["version"] == first

    # promote by hand, then roll back to the shipped model
    response = api("post", f"/versions/{second}/activate")
    assert response.status_code == 200 and response.json["active"] is True
    wait_for(lambda: model_version(client) == second, 5, 0.1, "the promoted version")
    assert served_version(client)["model"]["version"] == second
    assert api("post", "/versions/shipped/activate").status_code == 200
    wait_for(lambda: model_version(client) == "test-1", 5, 0.1, "the rollback")
    assert served_version(client)["model"]["version"] == "test-1"
    assert [v["id"] for v in api("get", "/versions").json["versions"] if v["active"]] == ["shipped"]


def test_one_job_at_a_time_cancel_and_resume(api, admin_app):
    job = api("post", "/jobs", json=LONG_JOB).json
    running = wait_for(lambda: training(
        api("get", f"/jobs/{job['id']}").json), 300, 0.3, "the job to run")
    assert running["pid"] and running["epochs"] == 300

    response = api("post", "/jobs", json=TINY_JOB)
    assert response.status_code == 409
    assert response.json["error"]["code"] == "job_running"
    assert f"job {job['id']} is running" in response.json["error"]["message"]

    asked = time.time()
    assert api("post", f"/jobs/{job['id']}/cancel").status_code == 202
    done = wait_job(api, job["id"], timeout=15)
    assert done["status"] == "cancelled" and time.time() - asked < 10
    assert done["result"]["resumable"] is True and done["version"] is None
    assert api("post", f"/jobs/{job['id']}/cancel").status_code == 409
    assert api("get", "/versions").json["active"] == "shipped"
    assert len(api("get", "/versions").json["versions"]) == 1  # nothing loadable left behind

    # resume continues from the checkpoint, with the same settings
    resumed = api("post", "/jobs", json={"resume": job["id"]})
    assert resumed.status_code == 202 and resumed.json["params"]["epochs"] == 300
    record = wait_for(lambda: [m for m in api("get", f"/jobs/{resumed.json['id']}").json["metrics"]
                               if m["type"] == "resumed"], 300, 0.3, "the resumed record")
    stopped = [m for m in done["metrics"] if m["type"] == "stopped"][0]
    assert record[0]["global_step"] == stopped["global_step"] > 0
    assert api("post", "/jobs", json={"resume": job["id"]}).status_code == 409  # busy (and used)


def test_sigkilled_trainer_marks_the_job_failed_and_serving_goes_on(api):
    client = api.client
    before = served_version(client)["model"]["version"]
    job = api("post", "/jobs", json=LONG_JOB).json
    running = wait_for(lambda: training(
        api("get", f"/jobs/{job['id']}").json), 300, 0.3, "the job to run")
    killed = time.time()
    os.kill(running["pid"], signal.SIGKILL)
    failed = wait_job(api, job["id"], timeout=10)
    assert failed["status"] == "failed" and time.time() - killed < 10
    assert "SIGKILL" in failed["error"] and "/300 step" in failed["error"]  # with its last log lines
    assert failed["pid"] is None
    assert api("get", "/versions").json["active"] == "shipped"
    assert served_version(client)["model"]["version"] == before
    assert api("post", "/jobs", json=TINY_JOB).status_code == 202  # the slot is free again


def test_sigkilled_job_process_is_noticed_by_readers(api):
    """The runner itself dies (e.g. the OOM killer): the next reader marks the job failed and
    stops the orphaned trainer; no job stays running forever."""
    job = api("post", "/jobs", json=LONG_JOB).json
    running = wait_for(lambda: training(
        api("get", f"/jobs/{job['id']}").json), 300, 0.3, "the job to run")
    os.kill(running["runner_pid"], signal.SIGKILL)
    failed = wait_job(api, job["id"], timeout=10)
    assert failed["status"] == "failed" and "ended without reporting" in failed["error"]
    wait_for(lambda: not procs.process_alive(running["pid"]), 10, 0.2, "the orphaned trainer to stop")


def test_html_forms_start_and_cancel_a_job(admin_app):
    client = admin_app.test_client()
    login(client)
    form = client.get("/admin/jobs/new").get_data(as_text=True)
    assert "best: airnet 96/384/384, 18 epochs, batch 1000, muon" in form  # read from ml.train's presets
    token = csrf_token(client, "/admin/jobs/new")
    response = client.post("/admin/jobs", data=dict(LONG_JOB, csrf_token=token, lr="", seed="3"))
    assert response.status_code == 302
    job_id = int(response.headers["Location"].rsplit("/", 1)[1])
    page = client.get(f"/admin/jobs/{job_id}").get_data(as_text=True)
    assert 'id="progress"' in page and 'id="loss-chart"' in page and "Cancel job" in page
    response = client.post("/admin/jobs", data=dict(TINY_JOB, csrf_token=token))
    assert response.status_code == 409 and "wait for it or cancel it" in response.get_data(as_text=True)
    response = client.post("/admin/jobs", data={"epochs": "many", "csrf_token": token})
    assert response.status_code == 400 and "epochs must be a whole number" in response.get_data(as_text=True)
    wait_for(lambda: client.get(f"/admin/jobs/{job_id}.json").json["status"] == "running", 300, 0.3, "running")
    assert client.post(f"/admin/jobs/{job_id}/cancel", data={"csrf_token": token}).status_code == 302
    wait_for(lambda: client.get(f"/admin/jobs/{job_id}.json").json["status"] == "cancelled", 15, 0.3, "cancel")
    listing = client.get("/admin").get_data(as_text=True)
    assert f'data-job="{job_id}"' in listing and "cancelled" in listing


def test_a_job_measures_the_robustness_suite_unless_the_setting_turns_it_off(tmp_path, tiny_model_dir, dataset):
    params = {"preset": "seed", "data": "default"}
    measured = create_app(admin_config(tmp_path / "a", tiny_model_dir, dataset, TRAIN_SUITE=True))
    skipped = create_app(admin_config(tmp_path / "b", tiny_model_dir, dataset))
    assert "--no-suite" not in jobs.build_command(Site.of(measured), params, tmp_path / "job")
    assert "--no-suite" in jobs.build_command(Site.of(skipped), params, tmp_path / "job")
