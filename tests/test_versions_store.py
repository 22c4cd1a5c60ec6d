"""Model versions beyond one host (#25): an instance of the old layout upgraded in place, a worker
that keeps serving through an outage of the store or the database (and /readyz says so), and, on
conftest's S3 server (SeaweedFS) and PostgreSQL where they can run, a version's round trip
through S3, a tampered object refused, and two hosts (two instance folders on one database and one
store) that each serve a promotion made through the other within 2 s."""

import logging
import shutil
import time
import uuid

import pytest
from sqlalchemy.exc import OperationalError

from conftest import make_model_dir
from ml.nets.modelfile import WEIGHTS_FILE, read_card
from test_admin_versions import add, trained_dir
from webapp import create_app
from webapp.core.errors import status_of
from webapp.lifecycle import versions
from webapp.lifecycle.db import database
from webapp.lifecycle.objectstore import MANIFEST, StoreUnavailable
from webapp.lifecycle.site import Site
from webapp.lifecycle.versions import VersionError, store
from webapp.predict import serving
from webapp.predict.serving import serving_status

TOKEN = {"Authorization": "Bearer y"}
PROMOTION_LIMIT_S = 2.0


def make_app(instance, model_dir, **settings):
    return create_app({"TESTING": True, "INSTANCE_PATH": str(instance), "MODEL_DIR": str(model_dir),
                       "ADMIN_PASSWORD": "x", "ADMIN_TOKEN": "y", "SECRET_KEY": "shared", **settings})


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    return make_app(tmp_path / "instance", tiny_model_dir)


def served_version(app) -> str:
    return app.test_client().get("/api/v1/model").json["version"]


def wait_until_served(app, version, limit) -> float:
    """Seconds until `app` serves `version` (polled as requests would); fails after `limit`."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if served_version(app) == version:
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"{version} not served within {limit} s (serving {served_version(app)})")


# --- the single-host layout of before, upgraded in place -------------------------------------

def test_an_old_instance_is_imported_once_and_its_pointer_becomes_the_row(tmp_path, tiny_model_dir):
    instance = tmp_path / "instance"
    old = "20250101-000000-job1"
    make_model_dir(instance / "models" / old, seed=1, version=old)
    (instance / "models" / "half-written").mkdir()  # no card: never a version, then or now
    (instance / "models" / "active").write_text(old + "\n")
    app = make_app(instance, tiny_model_dir)
    model_store = store(Site.of(app))
    assert model_store.active() == (old, 1)
    assert model_store.stored_ids() == [old]
    assert f"versions/{old}/{MANIFEST}" in model_store.objects.list("versions")
    assert served_version(app) == old

    model_store.activate("shipped")
    versions._imported.clear()  # as a process started later: the row exists, the file is not read again
    assert store(Site.of(app)).active() == ("shipped", 2)
    assert store(Site.of(app)).stored_ids() == [old]
    assert read_card(store(Site.of(app)).path(old))["version"] == old


# --- outages: keep serving, say so, pick the new version up after ---------------------------

def test_a_store_outage_keeps_the_served_version_and_readyz_says_so(app, tmp_path, monkeypatch, caplog):
    serving.warm_up(app)
    client = app.test_client()
    assert set(client.get("/readyz").json) == {"status", "model"}  # no warning while all is well
    model_store = store(Site.of(app))
    version = add(model_store, tmp_path, 1, accuracy=0.5)  # stored, never fetched on this host
    objects = model_store.objects
    fetch = objects.fetch_folder

    def unreachable(*args, **kwargs):
        raise StoreUnavailable(objects.url, "connection refused")
    monkeypatch.setattr(objects, "fetch_folder", unreachable)
    model_store.write_pointer(version)  # promoted elsewhere, while this host cannot reach the store
    with caplog.at_level(logging.ERROR):
        time.sleep(serving.CHECK_INTERVAL_S + 0.1)
        for _ in range(3):
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json["model"]["version"] == "test-1"
            time.sleep(serving.CHECK_INTERVAL_S + 0.1)
    assert "store unreachable" in ready.json["warning"] and "test-1" in ready.json["warning"]
    assert sum("store unreachable" in r.getMessage() for r in caplog.records) == 1  # once per outage
    with app.app_context():
        assert "store unreachable" in serving_status()["unreachable"]

    monkeypatch.setattr(objects, "fetch_folder", fetch)  # the store is back
    wait_until_served(app, version, PROMOTION_LIMIT_S)
    assert "warning" not in client.get("/readyz").json


def test_a_database_outage_keeps_the_served_version(app, tmp_path, monkeypatch):
    serving.warm_up(app)
    model_store = store(Site.of(app))
    with app.app_context():
        served = serving._served_model()

    def down():
        raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused"))
    monkeypatch.setattr(served.store, "active", down)
    time.sleep(serving.CHECK_INTERVAL_S + 0.1)
    ready = app.test_client().get("/readyz")
    assert ready.status_code == 200 and "database unreachable" in ready.json["warning"]
    monkeypatch.undo()
    version = add(model_store, tmp_path, 1)
    model_store.activate(version)
    wait_until_served(app, version, PROMOTION_LIMIT_S)


# --- S3 and PostgreSQL ------------------------------------------------------------------------

@pytest.fixture
def s3_url(request, monkeypatch):
    """A fresh prefix of conftest's S3 server as MODEL_STORE_URL, its endpoint and keys in the environment."""
    server = request.getfixturevalue("s3_server")
    for name, value in server.env.items():
        monkeypatch.setenv(name, value)
    return server.url_for(f"versions-test-{uuid.uuid4().hex[:8]}")


@pytest.fixture(params=["sqlite", "postgres"])
def shared_database(request, tmp_path):
    """One database for two hosts: a SQLite file beside both instances, or conftest's PostgreSQL
    (its active row removed first: the session's other tests share it)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    url = request.getfixturevalue("postgres_server").url
    with database(url) as conn:
        conn.execute("DELETE FROM active_model")
    return url


def test_a_version_round_trips_through_s3_and_a_tampered_object_is_refused(s3_url, tmp_path, tiny_model_dir):
    app = make_app(tmp_path / "instance", tiny_model_dir, MODEL_STORE_URL=s3_url)
    model_store = store(Site.of(app))
    good = add(model_store, tmp_path, 1, accuracy=0.5)
    source = trained_dir(tmp_path / "again", 0.5, seed=1)
    assert model_store.stored_ids() == [good]
    copy = model_store.path(good)
    assert (copy / WEIGHTS_FILE).read_bytes() == (source / WEIGHTS_FILE).read_bytes()
    assert read_card(copy)["version"] == good
    model_store.activate(good)
    assert served_version(app) == good

    bad = add(model_store, tmp_path, 2)
    key = f"versions/{bad}/{WEIGHTS_FILE}"
    data = bytearray(model_store.objects.get_bytes(key))
    data[len(data) // 2] ^= 0x01  # one bit of one byte, changed in the store itself
    model_store.objects.put_bytes(key, bytes(data))
    shutil.rmtree(model_store.cached_path(bad), ignore_errors=True)
    with pytest.raises(VersionError) as refused:
        model_store.activate(bad)
    assert refused.value.code == "damaged" and status_of(refused.value) == 409
    assert not model_store.cached_path(bad).exists()  # never kept, so never served
    response = app.test_client().post(f"/api/v1/admin/versions/{bad}/activate", headers=TOKEN)
    assert response.status_code == 409 and "checksum" in response.json["error"]["message"]
    assert model_store.active_id() == good and served_version(app) == good


def test_two_hosts_follow_one_active_row_within_two_seconds(s3_url, shared_database, tmp_path, tiny_model_dir):
    """Host A and host B: own instance folders (own caches), one database, one store. A promotion
    through A is served by B, and a rollback through B by A, each within 2 s."""
    hosts = [make_app(tmp_path / name, tiny_model_dir, MODEL_STORE_URL=s3_url, DATABASE_URL=shared_database)
             for name in ("host-a", "host-b")]
    a, b = hosts
    assert served_version(a) == served_version(b) == "test-1"
    version = add(store(Site.of(a)), tmp_path, 1, accuracy=0.5)
    assert store(Site.of(b)).stored_ids() == [version]
    assert a.test_client().post(f"/api/v1/admin/versions/{version}/activate", headers=TOKEN).status_code == 200
    assert wait_until_served(b, version, PROMOTION_LIMIT_S) < PROMOTION_LIMIT_S
    assert store(Site.of(b)).cached_path(version).is_dir()  # B fetched its own copy
    generation = store(Site.of(b)).active_generation()

    assert b.test_client().post("/api/v1/admin/versions/shipped/activate", headers=TOKEN).status_code == 200
    assert wait_until_served(a, "test-1", PROMOTION_LIMIT_S) < PROMOTION_LIMIT_S
    assert store(Site.of(a)).active() == ("shipped", generation + 1)
