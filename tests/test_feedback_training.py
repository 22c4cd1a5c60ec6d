"""Retraining on reviewed feedback: a tiny fine-tuning job with include_feedback and init_from
finishes, its card counts the feedback it trained on and names the evaluation items it was measured
on; the promotion gate refuses a version that is worse on users' photos beyond the margins."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

from admin_support import TINY_JOB, admin_config, auth_headers, wait_for, write_dataset
from conftest import make_model_dir
from ml.data.sources import load_dataset
from ml.data.files import write_json_atomic
from ml.nets.modelfile import CARD_FILE, read_card
from ml.predict.predictor import Predictor
from ml.train.cli import build_parser, resolve_config
from ml.train.finetune import initial_model
from webapp import create_app
from webapp.lifecycle import jobs, versions
from webapp.lifecycle.gate import promotion_gate, record_feedback
from webapp.lifecycle.site import Site
from webapp.lifecycle.versions import ModelStore


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("feedback-data"), train_per_class=10, test_per_class=3)


@pytest.fixture
def admin_app(tmp_path, tiny_model_dir, dataset):
    app = create_app(admin_config(tmp_path, tiny_model_dir, dataset, FEEDBACK_MAX_SENDS=1000))
    yield app
    site = Site.of(app)
    job = jobs.active_job(site)
    if job:  # leave no training process behind
        jobs.cancel(site, job["id"])
        wait_for(lambda: jobs.active_job(site) is None, 30, what="the job to stop")


def colour_photo(i) -> bytes:
    pixels = np.full((40, 40, 3), (i * 37 % 256, i * 91 % 256, i * 13 % 256), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def accepted_feedback(client, labels=("cat", "dog", "ship", "none")):
    """Send and accept photos until both parts hold at least one; returns the accepted items."""
    for i in range(60):
        form = {"label": labels[i % len(labels)], "image": (io.BytesIO(colour_photo(i)), f"{i}.png")}
        item_id = client.post("/api/v1/feedback", data=form, content_type="multipart/form-data").json["id"]
        client.post(f"/api/v1/admin/feedback/{item_id}", json={"status": "accepted"}, headers=auth_headers())
        items = client.get("/api/v1/admin/feedback?status=accepted", headers=auth_headers()).json["items"]
        splits = [(i["split"], i["label"] != "none") for i in items]
        if ("eval", True) in splits and ("train", True) in splits:
            return items
    raise AssertionError("60 photos and still no item in one of the parts")


def test_fine_tuning_on_feedback_records_it_in_the_card(admin_app):
    client = admin_app.test_client()
    items = accepted_feedback(client)
    client.post("/api/v1/feedback", data={"label": "frog", "image": (io.BytesIO(colour_photo(99)), "p.png")},
                content_type="multipart/form-data")  # pending: in no job
    train = [i for i in items if i["split"] == "train" and i["label"] != "none"]
    evaluation = [i for i in items if i["split"] == "eval"]

    bad = client.post("/api/v1/admin/jobs", json=dict(TINY_JOB, init_from="nope"), headers=auth_headers())
    assert bad.status_code == 400 and "init_from" in bad.json["error"]["message"]
    response = client.post("/api/v1/admin/jobs", json=dict(TINY_JOB, include_feedback=True, init_from="shipped"),
                           headers=auth_headers())
    assert response.status_code == 202, response.json
    assert response.json["params"]["include_feedback"] is True and response.json["params"]["init_from"] == "shipped"
    job = wait_for(lambda: (lambda j: j if j["status"] not in ("queued", "running") else None)(
        client.get(f"/api/v1/admin/jobs/{response.json['id']}", headers=auth_headers()).json), 300, 0.3, "the job")
    assert job["status"] == "succeeded", job

    card = versions.store(Site.of(admin_app)).card(job["version"])  # with the measure noted beside it
    assert card["feedback"]["trained_on"] == len(train) == card["data"]["extra_images"]
    measured = card["feedback"]["eval"]
    assert sorted(i["id"] for i in measured["items"]) == sorted(i["id"] for i in evaluation)
    assert {i["hash"] for i in measured["items"]} == {i["hash"] for i in evaluation}
    assert measured["images"] == len(evaluation) and 0 <= measured["accuracy"] <= 1
    assert card["hyperparameters"]["init_from"].endswith("tiny") and card["arch"]["name"] == "airnet"
    assert set(job["result"]["user_photos"]) == {"accuracy", "not_recognised_rate"}
    assert job["result"]["active_user_photos"]["accuracy"] is not None
    listed = client.get("/api/v1/admin/versions", headers=auth_headers()).json["versions"][0]
    assert listed["trained_on_feedback"] == len(train) and listed["user_photos"]["images"] == len(evaluation)
    page = client.get(f"/dashboard?version={job['version']}").get_data(as_text=True)
    assert "Accuracy on users' photos" in page and "Trained on feedback photos" in page


def eval_items(tmp_path, model_dir, labels):
    """Feedback evaluation items (32x32 PNGs), labelled as `model_dir` answers unless told."""
    predictor = Predictor(model_dir)
    items = []
    for i, label in enumerate(labels):
        path = tmp_path / f"{i}.png"
        path.write_bytes(colour_photo(i))
        answer = predictor.predict_arrays([predictor.decode(str(path))])[0]["label"]
        items.append({"id": i, "hash": f"{i:064x}", "label": label or answer, "file": str(path)})
    return items


@pytest.fixture
def two_versions(tmp_path, tiny_model_dir):
    """A store whose active version is the tiny model, plus a candidate copy of it."""
    store = ModelStore(tmp_path / "store", tiny_model_dir)
    candidate = tmp_path / "candidate"
    shutil.copytree(tiny_model_dir, candidate)
    write_json_atomic(candidate / CARD_FILE, dict(read_card(candidate), evaluation={"accuracy": 0.9}))
    return store, store.add(candidate, 1)


def margins(items, accuracy=0.0, unrecognised=0.0):
    return {"eval_items": items, "accuracy_margin": accuracy, "unrecognised_margin": unrecognised}


def set_user_photos(store, version_id, **measure):
    """Overwrite parts of the version's recorded measure on users' photos (the store's note beside
    the version: its files never change)."""
    section = store.notes(version_id)
    store.write_notes(version_id, dict(section, eval=dict(section["eval"], **measure)))


def test_gate_refuses_a_version_worse_on_users_photos(tmp_path, tiny_model_dir, two_versions):
    store, version = two_versions
    items = eval_items(tmp_path, tiny_model_dir, [None, None, None, None])  # the active one is right on all
    section = record_feedback(store, version, 3, items)
    assert section["eval"]["accuracy"] == 1.0 and section["eval"]["not_recognised_rate"] == 0.0
    assert [i["id"] for i in section["eval"]["items"]] == [0, 1, 2, 3]
    set_user_photos(store, version, accuracy=0.5)  # as if the candidate had got half of them wrong
    decision = promotion_gate(store, version, 0.0, margins(items, accuracy=0.25))
    assert decision["promoted"] is False and "users' photos" in decision["reason"]
    assert decision["active_user_photos"]["accuracy"] == 1.0 and store.active_id() == "shipped"
    assert promotion_gate(store, version, 0.0, margins(items, accuracy=0.5))["promoted"] is True


def test_gate_refuses_a_version_that_recognises_fewer_users_photos(tmp_path, tiny_model_dir, two_versions):
    store, version = two_versions
    items = eval_items(tmp_path, tiny_model_dir, [None, None])
    record_feedback(store, version, 0, items)
    set_user_photos(store, version, not_recognised_rate=0.5)
    decision = promotion_gate(store, version, 0.0, margins(items, unrecognised=0.1))
    assert decision["promoted"] is False and "not recognised" in decision["reason"]


def test_without_reviewed_photos_the_gate_is_validation_accuracy_alone(two_versions):
    store, version = two_versions
    assert record_feedback(store, version, 0, [])["eval"] is None
    assert promotion_gate(store, version, 0.0, margins([]))["promoted"] is True


def test_init_from_starts_from_the_versions_weights(tmp_path, tiny_model_dir):
    data = write_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    config = resolve_config(build_parser().parse_args(["--preset", "fast", "--data", str(data),
                                                       "--init-from", str(tiny_model_dir)]))
    assert (config["arch"], config["widths"], config["epochs"]) == ("airnet", [8, 16, 16], 2)
    assert config["lr"] == pytest.approx(0.165)
    model = initial_model(config, load_dataset(data))
    trained = Predictor(tiny_model_dir).model
    assert all(np.array_equal(a.detach().numpy(), b.detach().numpy())
               for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    other = make_model_dir(tmp_path / "seednet", arch="seednet")
    assert resolve_config(build_parser().parse_args(["--init-from", str(other)]))["arch"] == "seednet"
