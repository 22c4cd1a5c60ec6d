"""The model store: versions in the object store (the instance folder's by default), the promotion
gate, activation, damaged weights and tampered objects refused, the active row's generation, and the
hot swap in a worker (no request in flight fails)."""

import shutil
import threading
import time

import pytest

from conftest import image_bytes, make_model_dir
from ml.data.files import write_json_atomic
from ml.nets.modelfile import CARD_FILE, WEIGHTS_FILE, read_card
from webapp import create_app
from webapp.core.errors import status_of
from webapp.lifecycle.gate import promotion_gate
from webapp.lifecycle.site import Site
from webapp.lifecycle.objectstore import MANIFEST
from webapp.lifecycle.versions import ModelStore, VersionError, list_versions, store
from webapp.predict.serving import CHECK_INTERVAL_S, current_predictor, serving_status


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"),
                       "MODEL_DIR": str(tiny_model_dir), "ADMIN_PASSWORD": "x", "ADMIN_TOKEN": "y"})


def trained_dir(path, accuracy=None, seed=0):
    """A model folder like a finished job writes, with an evaluation report when `accuracy` is given."""
    make_model_dir(path, seed=seed, version="20260101-000000")
    if accuracy is not None:
        card = read_card(path)
        write_json_atomic(path / CARD_FILE, dict(card, evaluation={"accuracy": accuracy, "split": "validation"},
                                                 created=f"2026-01-01T00:00:0{seed}+00:00"))
    return path


def add(model_store, tmp_path, job_id, accuracy=None):
    return model_store.add(trained_dir(tmp_path / f"out{job_id}", accuracy, seed=job_id), job_id)


def stored_weights(model_store, version_id):
    """The weights object of a version in the instance folder's store."""
    return model_store.objects.root / "versions" / version_id / WEIGHTS_FILE


def tamper(model_store, version_id, keep=500):
    """Truncate a version's weights in the store and drop this host's copy, as a host that never
    fetched it would find it."""
    weights = stored_weights(model_store, version_id)
    weights.write_bytes(weights.read_bytes()[:keep])
    shutil.rmtree(model_store.cached_path(version_id), ignore_errors=True)


def test_add_writes_a_complete_version_into_the_store(app, tmp_path):
    model_store = store(Site.of(app))
    version_id = add(model_store, tmp_path, 7, accuracy=0.5)
    assert version_id.endswith("-job7")
    keys = model_store.objects.list("versions")
    assert f"versions/{version_id}/{MANIFEST}" in keys and f"versions/{version_id}/{CARD_FILE}" in keys
    assert model_store.stored_ids() == [version_id]
    folder = model_store.path(version_id)  # this host's verified copy
    assert folder == model_store.cached_path(version_id) and folder.is_relative_to(app.instance_path)
    card = read_card(folder)
    assert card["version"] == version_id and card["job"] == 7 and card["trained_version"] == "20260101-000000"
    listed = list_versions(Site.of(app))
    assert [v["id"] for v in listed] == [version_id, "shipped"]
    assert listed[0]["metrics"]["accuracy"] == 0.5 and listed[0]["path"] == str(folder)
    assert listed[1]["active"] and listed[1]["shipped"] and not listed[0]["active"]
    assert not (model_store.root).exists()  # nothing written in the old layout's folder


@pytest.mark.parametrize("active_acc, new_acc, margin, promoted", [
    (0.80, 0.79, 0.0, False), (0.80, 0.80, 0.0, True), (0.80, 0.79, 0.02, True),
    (0.80, 0.90, 0.0, True), (0.80, 0.85, -0.1, False)])
def test_promotion_gate(tmp_path, tiny_model_dir, active_acc, new_acc, margin, promoted):
    model_store = ModelStore(tmp_path / "models", tiny_model_dir)
    first = add(model_store, tmp_path, 1, accuracy=active_acc)
    model_store.activate(first)
    second = add(model_store, tmp_path, 2, accuracy=new_acc)
    decision = promotion_gate(model_store, second, margin)
    assert decision["promoted"] is promoted
    assert decision["active_accuracy"] == active_acc and decision["accuracy"] == new_acc
    assert model_store.active_id() == (second if promoted else first)


def test_activation_refuses_unknown_ids_and_truncated_weights(tmp_path, tiny_model_dir):
    model_store = ModelStore(tmp_path / "models", tiny_model_dir)
    good = add(model_store, tmp_path, 1)
    model_store.activate(good)
    damaged = add(model_store, tmp_path, 2)
    tamper(model_store, damaged, keep=1000)
    with pytest.raises(VersionError) as refused:
        model_store.activate(damaged)
    assert status_of(refused.value) == 409 and "checksum" in str(refused.value)
    assert refused.value.code == "damaged" and not model_store.cached_path(damaged).exists()
    assert model_store.active_id() == good
    assert promotion_gate(model_store, damaged, 1.0)["promoted"] is False   # the gate refuses it too
    assert model_store.active_id() == good
    for bad in ("../models", "active", "", "nope", ".lock", None):
        with pytest.raises(VersionError):
            model_store.activate(bad)


def test_api_refuses_a_damaged_version_and_keeps_serving(app, tmp_path):
    client = app.test_client()
    headers = {"Authorization": "Bearer y"}
    damaged = add(store(Site.of(app)), tmp_path, 3)
    tamper(store(Site.of(app)), damaged, keep=-10)
    response = client.post(f"/api/v1/admin/versions/{damaged}/activate", headers=headers)
    assert response.status_code == 409 and "damaged" in response.json["error"]["message"]
    assert client.get("/api/v1/admin/versions", headers=headers).json["active"] == "shipped"
    assert client.get("/api/v1/model").json["version"] == "test-1"


def test_worker_swaps_to_the_new_active_version_and_refuses_damaged_weights(app, tmp_path):
    with app.app_context():
        model_store = store(Site.of(app))
        assert current_predictor().version == "test-1"
        first = add(model_store, tmp_path, 1)
        model_store.activate(first)
        old = current_predictor()
        swapped = wait_served(first)
        assert swapped is not old and old.version == "test-1"
        assert old.predict([image_bytes()])[0]["label"]  # an old object in flight still works

        # a version damaged in the store after its activation by another host: this worker
        # refuses it (the digest does not match) and keeps serving `first`
        second = add(model_store, tmp_path, 2)
        model_store.activate(second)
        tamper(model_store, second)
        time.sleep(CHECK_INTERVAL_S + 0.1)
        assert current_predictor().version == first
        status = serving_status()
        assert status["active"] == second and status["serving"] == first
        assert second in status["error"] and "checksum" in status["error"]

        model_store.activate("shipped")
        wait_served("test-1")
        assert serving_status()["error"] is None


def test_a_damaged_active_version_at_start_falls_back_to_the_shipped_model(app, tmp_path):
    with app.app_context():
        model_store = store(Site.of(app))
        version = add(model_store, tmp_path, 1)
        model_store.activate(version)
        tamper(model_store, version, keep=0)
        assert current_predictor().version == "test-1"
        assert version in serving_status()["error"]


def wait_served(version, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        predictor = current_predictor()
        if predictor.version == version:
            return predictor
        time.sleep(0.05)
    raise AssertionError(f"{version} not served within {timeout}s")


def test_no_request_fails_while_versions_swap(app, tmp_path):
    """Threads classify while the active version flips back and forth: every answer succeeds and
    names a version that was active."""
    model_store = store(Site.of(app))
    ids = [add(model_store, tmp_path, n) for n in (1, 2)]
    answers, errors, stop = [], [], threading.Event()
    photo = image_bytes()

    def classify():
        with app.app_context():
            while not stop.is_set():
                try:
                    predictor = current_predictor()
                    result = predictor.predict([photo])[0]
                    answers.append((predictor.version, result["label"]))
                except Exception as error:  # noqa: BLE001 - any failure is the test's finding
                    errors.append(error)

    threads = [threading.Thread(target=classify) for _ in range(3)]
    for t in threads:
        t.start()
    for n in range(6):
        model_store.activate(ids[n % 2])
        time.sleep(0.6)
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    assert {version for version, _ in answers} <= set(ids) | {"test-1"}
    assert len({version for version, _ in answers}) >= 2


def test_every_change_of_the_active_row_adds_one_to_its_generation(tmp_path, tiny_model_dir):
    model_store = ModelStore(tmp_path / "instance" / "models", tiny_model_dir)
    assert model_store.active() == ("shipped", 0)  # no row yet
    version = add(model_store, tmp_path, 1, accuracy=0.5)
    model_store.activate(version)
    assert model_store.active() == (version, 1)
    model_store.activate("shipped")
    model_store.activate("shipped")  # the same version again is a change too: workers recheck
    assert model_store.active() == ("shipped", 3) and model_store.active_generation() == 3
    assert promotion_gate(model_store, version, 0.0)["promoted"] is True
    assert model_store.active() == (version, 4)
    assert [v["id"] for v in model_store.list()] == [version, "shipped"]
