"""Prometheus metrics at /metrics: what one process counts, the shared state read at scrape time,
and totals that stay correct across gunicorn workers (multiprocess mode), worker deaths included."""

import io
import json
import os
import signal
import threading
from pathlib import Path

import pytest
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families

from admin_support import TINY_JOB, admin_config, auth_headers, wait_for, write_dataset
from conftest import image_bytes, start_server
from web_samples import encode, noise_image

STATES = ("queued", "running", "succeeded", "failed", "cancelled")


def samples(text: str) -> dict:
    """{(sample name, frozenset of labels): value} of a Prometheus text exposition."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def total(metrics: dict, name: str, **labels) -> float:
    """Sum over every sample of `name` whose labels include `labels`."""
    return sum(v for (n, lbls), v in metrics.items() if n == name and set(labels.items()) <= lbls)


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return samples(response.get_data(as_text=True))


def test_metrics_is_prometheus_text_with_every_family(client):
    response = client.get("/metrics")
    assert response.status_code == 200 and "version=0.0.4" in response.headers["Content-Type"]
    names = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {"webapp_http_requests", "webapp_http_request_duration_seconds", "webapp_predictions",
            "webapp_predictions_recognised", "webapp_batch_images", "webapp_model_served_workers",
            "webapp_model_active", "webapp_training_jobs"} <= names


def test_requests_latency_and_predictions_are_counted(client):
    before = scrape(client)
    answer = client.post("/api/v1/predict", data={"image": (io.BytesIO(image_bytes("JPEG")), "a.jpg")}).get_json()
    refused = client.post("/api/v1/predict", data={"image": (io.BytesIO(b"not a photo" * 9), "b.jpg")})
    assert refused.status_code == 415
    after = scrape(client)
    label = answer["predictions"][0]["label"]

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)
    assert grew("webapp_http_requests_total", endpoint="api.predict", method="POST", status="200") == 1
    assert grew("webapp_http_requests_total", endpoint="api.predict", method="POST", status="415") == 1
    assert grew("webapp_http_request_duration_seconds_count", endpoint="api.predict") == 2
    assert grew("webapp_predictions_total", label=label) == 1
    assert total(after, "webapp_predictions_total") - total(before, "webapp_predictions_total") == 1
    assert grew("webapp_batch_images_count") == 1 and grew("webapp_batch_images_sum") == 1


def test_answers_are_counted_by_recognised(tmp_path, refusing_model_dir, client):
    """`client` serves a card without a threshold (recognises everything), the other app one whose
    threshold refuses everything; one process, so both count into the same counter."""
    from webapp import create_app
    refusing = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "refusing"),
                           "MODEL_DIR": str(refusing_model_dir)}).test_client()
    before = scrape(client)
    photos = {"image": [(io.BytesIO(image_bytes("PNG", color=colour)), f"{i}.png")
                        for i, colour in enumerate(((0, 0, 0), (128, 128, 128), (250, 250, 250)))]}
    assert refusing.post("/api/v1/predict", data=photos).status_code == 200
    assert client.post("/api/v1/predict", data={"image": (io.BytesIO(image_bytes("JPEG")), "a.jpg")}).status_code == 200
    after = scrape(client)

    def grew(answer):
        name = "webapp_predictions_recognised_total"
        return value(after, name, recognised=answer) - value(before, name, recognised=answer)
    assert (grew("false"), grew("true")) == (3, 1)
    assert ("webapp_predictions_recognised_total", frozenset({("recognised", "false")})) in before  # from the start


def test_unknown_paths_share_one_label(client):
    before = scrape(client)
    for path in ("/no/such/page", "/another/one", "/x?y=1"):
        assert client.get(path).status_code == 404
    after = scrape(client)
    key = {"endpoint": "unmatched", "method": "GET", "status": "404"}
    assert value(after, "webapp_http_requests_total", **key) - value(before, "webapp_http_requests_total", **key) == 3
    assert not any("/no/such" in str(labels) for _, labels in after)


def test_active_version_and_job_states_follow_a_training_job(tmp_path, tiny_model_dir):
    from webapp import create_app
    data = write_dataset(tmp_path / "data", train_per_class=10, test_per_class=4)
    app = create_app(admin_config(tmp_path, tiny_model_dir, data, PROMOTION_MARGIN=1.0))
    client = app.test_client()
    before = scrape(client)
    assert value(before, "webapp_model_active", id="shipped", version="test-1") == 1
    assert all(value(before, "webapp_training_jobs", state=s) == 0 for s in STATES)

    job = client.post("/api/v1/admin/jobs", json=dict(TINY_JOB, limit=100, batch_size=20),
                      headers=auth_headers()).get_json()
    during = scrape(client)
    assert value(during, "webapp_training_jobs", state="queued") + value(during, "webapp_training_jobs",
                                                                         state="running") == 1
    def finished():
        state = client.get(f"/api/v1/admin/jobs/{job['id']}", headers=auth_headers()).get_json()
        return state if state["status"] not in ("queued", "running") else None
    done = wait_for(finished, timeout=240, interval=1, what="the training job")
    assert done["status"] == "succeeded", done
    after = scrape(client)
    assert value(after, "webapp_training_jobs", state="succeeded") == 1
    assert value(after, "webapp_training_jobs", state="running") == 0
    assert value(after, "webapp_model_active", id=done["version"], version=done["version"]) == 1
    assert value(after, "webapp_model_active", id="shipped", version="test-1") == 0


def test_a_scrape_counts_jobs_without_changing_them(tmp_path, tiny_model_dir):
    """/metrics only reads: a running job whose runner is gone is counted as the database holds it
    (the next reader of the jobs API marks it failed), and nothing is signalled."""
    from webapp import create_app
    from webapp.lifecycle import jobs
    from webapp.lifecycle.site import Site
    app = create_app(admin_config(tmp_path, tiny_model_dir, tmp_path))
    with Site.of(app).database() as conn:
        conn.execute("INSERT INTO jobs (status, params, spec, created, runner_pid, runner_start) "
                     "VALUES ('running', '{}', '{}', 0, 999999999, 'gone')")
    client = app.test_client()
    for _ in range(2):
        assert value(scrape(client), "webapp_training_jobs", state="running") == 1
    assert jobs.count_by_status(Site.of(app)) == {"running": 1}
    assert [job["status"] for job in jobs.list_jobs(Site.of(app))] == ["failed"]  # a reader reconciles
    assert value(scrape(client), "webapp_training_jobs", state="failed") == 1


# ---- across gunicorn workers ----

@pytest.fixture(scope="module")
def two_workers(tmp_path_factory, tiny_model_dir):
    instance = tmp_path_factory.mktemp("metrics") / "instance"
    instance.mkdir()
    server = start_server(instance, tiny_model_dir, workers=2)
    yield server.process, server.base, instance
    server.stop()


def http(base, method, path, body=None, ctype=None):
    import http.client
    conn = http.client.HTTPConnection(base.split("//")[1], timeout=60)  # a fresh connection each time
    try:
        conn.request(method, path, body=body, headers={"Content-Type": ctype} if ctype else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def remote_scrape(base) -> dict:
    status, body = http(base, "GET", "/metrics")
    assert status == 200
    return samples(body.decode())


def pids_counting(instance, kind: str, metric: str) -> set:
    """Worker pids whose own samples file holds a positive `metric`. Every worker creates its
    counter file when it imports the metrics module, before it has answered or loaded anything,
    so a file alone proves nothing."""
    folder = Path(instance) / "prometheus"
    return {int(name.split("_")[-1].split(".")[0]) for name in os.listdir(folder) if name.startswith(kind + "_")
            and any(json.loads(key)[1] == metric and number > 0
                    for key, number, *_ in MmapedDict.read_all_values_from_file(folder / name))}


def answering_pids(instance) -> set:
    return pids_counting(instance, "counter", "webapp_predictions_total")


def serving_pids(instance) -> set:
    return pids_counting(instance, "gauge_livesum", "webapp_model_served_workers")


def predict_concurrently(base, count):
    photo = encode(noise_image((64, 48)), "JPEG")
    boundary = "b0undary"
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="p.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode() + photo + f"\r\n--{boundary}--\r\n".encode()
    statuses = []

    def send():
        statuses.append(http(base, "POST", "/api/v1/predict", body, f"multipart/form-data; boundary={boundary}")[0])
    threads = [threading.Thread(target=send) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * count


@pytest.mark.slow
def test_totals_are_the_same_whichever_worker_answers(two_workers):
    process, base, instance = two_workers
    # the server answers once one worker is up; the other may still be loading its model (slowly,
    # on a busy machine), and until then it neither serves nor answers
    wait_for(lambda: len(serving_pids(instance)) == 2, timeout=90, interval=0.5,
             what="both workers to load their model")
    before = total(remote_scrape(base), "webapp_predictions_total")
    sent = 0
    while len(answering_pids(instance)) < 2 and sent < 200:  # until both workers have answered some
        predict_concurrently(base, 8)
        sent += 8
    assert len(answering_pids(instance)) == 2, "one worker answered every request"
    scrapes = [remote_scrape(base) for _ in range(8)]
    assert {total(s, "webapp_predictions_total") - before for s in scrapes} == {sent}
    assert {value(s, "webapp_model_served_workers", id="shipped", version="test-1") for s in scrapes} == {2}


@pytest.mark.slow
def test_a_dead_worker_stops_counting_as_serving_but_its_counts_stay(two_workers):
    from scripts.serve_tools import worker_pids
    process, base, instance = two_workers
    predict_concurrently(base, 4)
    before = remote_scrape(base)
    victim, survivor = worker_pids(process.pid)
    os.kill(victim, signal.SIGKILL)
    def replaced():
        pids = worker_pids(process.pid)
        return pids if len(pids) == 2 and victim not in pids else None
    newcomer = (set(wait_for(replaced, timeout=60, what="gunicorn to replace the killed worker")) - {survivor}).pop()
    wait_for(lambda: newcomer in serving_pids(instance), timeout=60, interval=0.5,
             what="the new worker to load its model")
    after = remote_scrape(base)
    assert value(after, "webapp_model_served_workers", id="shipped", version="test-1") == 2
    assert total(after, "webapp_predictions_total") == total(before, "webapp_predictions_total")
