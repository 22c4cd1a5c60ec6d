"""The object store (webapp/lifecycle/objectstore.py): every behaviour checked on the instance-folder
store and on S3 against a real S3-compatible server (SeaweedFS, conftest's s3_server; skipped
where it cannot run), plus an unreachable S3 endpoint said quickly with its URL."""

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ml.data.files import sha256_file
from webapp.lifecycle.objectstore import (FETCHED_MARKER, MANIFEST, DigestMismatch, LocalStore, ObjectExists,
                                          ObjectMissing, S3Store, StoreUnavailable, make_client, open_store,
                                          publish_folder)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BAD_KEYS = ["", "/abs/key", "a//b", "a/", "../x", "a/../b", "a/./b", ".hidden", "a/.tmp", "a\\b", "a\x00b"]


@pytest.fixture(scope="module")
def s3_bucket(request):
    """(server, bucket) on the session's SeaweedFS: one bucket for this module, a fresh prefix per test."""
    try:
        server = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("no s3_server fixture in tests/conftest.py")
    bucket = f"objectstore-{uuid.uuid4().hex[:8]}"
    server.create_bucket(bucket)
    return server, bucket


def s3_client(server, **overrides):
    settings = dict(endpoint_url=server.endpoint, aws_access_key_id=server.access_key,
                    aws_secret_access_key=server.secret_key, region_name="us-east-1")
    return make_client(**dict(settings, **overrides))


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "instance" / "store")
    server, bucket = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, f"test-{uuid.uuid4().hex[:8]}/inner", client=s3_client(server))


def wipe(store):
    """The store's objects gone (the local store's folder removed outright)."""
    if isinstance(store, LocalStore):
        shutil.rmtree(store.root)
    else:
        store.delete_prefix("")


def model_folder(path, weights=b"\x00weights" * 5000):
    """A folder like a model version: weights, card, a nested gallery, an empty file."""
    (path / "gallery").mkdir(parents=True)
    (path / "model.safetensors").write_bytes(weights)
    (path / "card.json").write_text(json.dumps({"arch": "airnet", "version": "v1"}))
    (path / "gallery" / "samples-cat.png").write_bytes(bytes(range(256)) * 40)
    (path / "gallery" / "empty.txt").write_bytes(b"")
    return path


def tree(folder):
    """{relative path: bytes} of every file, the fetch marker left out."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != FETCHED_MARKER}


# --- keys and objects ---------------------------------------------------------------------------

def test_bytes_and_files_round_trip(store, tmp_path):
    store.put_bytes("feedback/ab/cd.jpg", b"\xff\xd8photo")
    assert store.get_bytes("feedback/ab/cd.jpg") == b"\xff\xd8photo"
    store.put_bytes("feedback/ab/cd.jpg", b"replaced")  # plain objects may be replaced (not versions)
    assert store.get_bytes("feedback/ab/cd.jpg") == b"replaced"
    source = tmp_path / "checkpoint.pt"
    source.write_bytes(bytes(range(256)) * 8000)  # 2 MB: streamed in chunks both ways
    store.put_file("checkpoints/job7/resume.pt", source)
    target = tmp_path / "out" / "resume.pt"
    target.parent.mkdir()
    store.get_file("checkpoints/job7/resume.pt", target)
    assert target.read_bytes() == source.read_bytes()
    assert [p.name for p in target.parent.iterdir()] == ["resume.pt"]  # no temporary file left beside it
    assert store.exists("checkpoints/job7/resume.pt") and not store.exists("checkpoints/job7/other.pt")
    assert not store.exists("checkpoints/job7")  # a folder is not an object


def test_missing_objects_are_object_missing(store, tmp_path):
    with pytest.raises(ObjectMissing) as caught:
        store.get_bytes("versions/none/card.json")
    assert caught.value.key == "versions/none/card.json" and caught.value.code == "not_found"
    with pytest.raises(ObjectMissing):
        store.get_file("versions/none/card.json", tmp_path / "card.json")
    assert not (tmp_path / "card.json").exists()


def test_list_and_delete(store):
    for key in ["b/2", "a/x/1", "a/0", "ab/3", "c"]:
        store.put_bytes(key, key.encode())
    assert store.list("") == ["a/0", "a/x/1", "ab/3", "b/2", "c"]
    assert store.list("a") == ["a/0", "a/x/1"] == store.list("a/")  # a folder, not a string prefix: no ab/3
    assert store.list("a/x") == ["a/x/1"] and store.list("nothing") == []
    store.delete("a/0")
    store.delete("a/0")  # deleting what is gone is no error: a retried clean-up must not fail
    assert store.list("a") == ["a/x/1"]
    store.delete_prefix("a")
    assert store.list("") == ["ab/3", "b/2", "c"]
    store.delete_prefix("nothing")
    store.delete_prefix("")
    assert store.list("") == []


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_keys_are_refused(store, key):
    with pytest.raises(ValueError, match="store key"):
        store.put_bytes(key, b"x")
    with pytest.raises(ValueError, match="store key"):
        store.get_bytes(key)
    with pytest.raises(ValueError, match="store key"):
        store.exists(key)
    if key not in ("", "a/"):  # "" and "a/" are fine as list prefixes (everything, the folder a)
        with pytest.raises(ValueError, match="store key"):
            store.list(key)
    with pytest.raises(ValueError, match="store key"):
        store.put_folder(key, ".")


def test_local_store_stays_under_its_root(tmp_path):
    store = LocalStore(tmp_path / "store")
    with pytest.raises(ValueError):
        store.put_bytes("../escaped", b"x")
    assert not (tmp_path / "escaped").exists()
    with pytest.raises(FileNotFoundError):  # a source that cannot be read leaves no object, no temporary file
        store.put_file("a/b", tmp_path / "no-such-file")
    assert store.list("") == [] and list((tmp_path / "store" / "a").iterdir()) == []


# --- immutable folders --------------------------------------------------------------------------

def test_put_folder_and_fetch_folder_round_trip(store, tmp_path):
    folder = model_folder(tmp_path / "model")
    manifest = store.put_folder("versions/20250101-job1", folder)
    assert manifest == {rel: sha256_file(folder / rel) for rel in tree(folder)}
    assert json.loads(store.get_bytes(f"versions/20250101-job1/{MANIFEST}")) == manifest
    assert store.list("versions/20250101-job1") == sorted(
        [f"versions/20250101-job1/{rel}" for rel in manifest] + [f"versions/20250101-job1/{MANIFEST}"])
    copy = store.fetch_folder("versions/20250101-job1", tmp_path / "cache")
    assert copy.parent == tmp_path / "cache" and copy.is_dir()
    assert tree(copy) == tree(folder)
    assert (copy / FETCHED_MARKER).is_file()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [copy.name]  # no staging folder left


def test_manifest_is_written_last(store, tmp_path, monkeypatch):
    written = []
    for name in ("put_bytes", "put_file", "put_new"):
        original = getattr(store, name)
        monkeypatch.setattr(store, name, lambda key, data, _original=original: (written.append(key),
                                                                                 _original(key, data)))
    manifest = store.put_folder("versions/v2", model_folder(tmp_path / "model"))
    assert written[-1] == f"versions/v2/{MANIFEST}"
    assert sorted(written[:-1]) == [f"versions/v2/{rel}" for rel in sorted(manifest)]


def test_a_version_is_never_overwritten(store, tmp_path):
    store.put_folder("versions/v3", model_folder(tmp_path / "first"))
    before = {key: store.get_bytes(key) for key in store.list("versions/v3")}
    with pytest.raises(ObjectExists) as caught:
        store.put_folder("versions/v3", model_folder(tmp_path / "second", weights=b"other weights"))
    assert caught.value.code == "refused" and MANIFEST in str(caught.value)
    assert {key: store.get_bytes(key) for key in store.list("versions/v3")} == before


def test_a_manifest_written_meanwhile_wins(store, tmp_path, monkeypatch):
    """Two writers of one version: the one whose manifest lands second is refused (put_new), even
    when both passed the first check."""
    monkeypatch.setattr(store, "exists", lambda key: False)
    store.put_folder("versions/v4", model_folder(tmp_path / "first"))
    with pytest.raises(ObjectExists):
        store.put_folder("versions/v4", model_folder(tmp_path / "second"))


@pytest.mark.parametrize("damage", ["changed", "missing", "extra"])
def test_a_damaged_version_is_refused_and_not_cached(store, tmp_path, damage):
    folder = model_folder(tmp_path / "model")
    manifest = store.put_folder("versions/v5", folder)
    if damage == "changed":
        store.put_bytes("versions/v5/model.safetensors", b"tampered weights")
    elif damage == "missing":
        store.delete("versions/v5/gallery/samples-cat.png")
    else:
        store.put_bytes("versions/v5/gallery/extra.png", b"not in the manifest")
    cache = tmp_path / "cache"
    with pytest.raises(DigestMismatch) as caught:
        store.fetch_folder("versions/v5", cache)
    error = caught.value
    if damage == "changed":
        assert error.key == "versions/v5/model.safetensors"
        assert error.expected == manifest["model.safetensors"]
        assert error.got == hashlib.sha256(b"tampered weights").hexdigest()
    elif damage == "missing":
        assert error.key == "versions/v5/gallery/samples-cat.png" and error.got is None
    else:
        assert error.key == "versions/v5/gallery/extra.png" and error.expected is None
    assert error.code == "damaged" and error.key in str(error)
    assert list(cache.iterdir()) == []  # neither a copy nor its staging folder


def test_a_tampered_manifest_cannot_write_outside_the_copy(store, tmp_path):
    store.put_bytes(f"versions/v6/{MANIFEST}", json.dumps({"../../escaped": "0" * 64}).encode())
    with pytest.raises(DigestMismatch):
        store.fetch_folder("versions/v6", tmp_path / "cache" / "inner")
    assert not (tmp_path / "escaped").exists() and list((tmp_path / "cache" / "inner").iterdir()) == []
    store.put_bytes(f"versions/v7/{MANIFEST}", b"not json")
    with pytest.raises(DigestMismatch, match="MANIFEST"):
        store.fetch_folder("versions/v7", tmp_path / "cache")
    with pytest.raises(ObjectMissing):
        store.fetch_folder("versions/never-written", tmp_path / "cache")


def test_a_cached_version_is_served_without_the_store(store, tmp_path, monkeypatch):
    folder = model_folder(tmp_path / "model")
    store.put_folder("versions/v8", folder)
    first = store.fetch_folder("versions/v8", tmp_path / "cache")
    wipe(store)
    for name in ("get_bytes", "get_file", "list", "exists"):
        monkeypatch.setattr(store, name, lambda *args: pytest.fail("the store was asked for a cached version"))
    again = store.fetch_folder("versions/v8", tmp_path / "cache")
    assert again == first and tree(again) == tree(folder)


def test_concurrent_fetches_all_end_with_a_good_copy(store, tmp_path):
    folder = model_folder(tmp_path / "model")
    store.put_folder("versions/v9", folder)
    start = threading.Barrier(4)

    def fetch(_):
        start.wait()
        return store.fetch_folder("versions/v9", tmp_path / "cache")

    with ThreadPoolExecutor(4) as pool:
        copies = list(pool.map(fetch, range(4)))
    assert len(set(copies)) == 1 and tree(copies[0]) == tree(folder)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [copies[0].name]


FETCH_SCRIPT = """
import sys
from pathlib import Path
from webapp.lifecycle.objectstore import open_store
store = open_store(sys.argv[1] or None, Path(sys.argv[2]))
print(store.fetch_folder("versions/v10", sys.argv[3]))
"""


def test_processes_fetching_one_version_at_once_all_get_a_good_copy(store, tmp_path, request):
    """Separate processes (web workers of one host) fetch the same version at the same moment."""
    folder = model_folder(tmp_path / "model")
    store.put_folder("versions/v10", folder)
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT))
    if isinstance(store, LocalStore):
        url, instance = "", store.root.parent
    else:
        server, _ = request.getfixturevalue("s3_bucket")
        url, instance = f"s3://{store.bucket}/{store.prefix}", tmp_path
        env.update(AWS_ENDPOINT_URL_S3=server.endpoint, AWS_ACCESS_KEY_ID=server.access_key,
                   AWS_SECRET_ACCESS_KEY=server.secret_key, AWS_DEFAULT_REGION="us-east-1")
    procs = [subprocess.Popen([sys.executable, "-c", FETCH_SCRIPT, url, str(instance), str(tmp_path / "cache")],
                              env=env, stdout=subprocess.PIPE, text=True) for _ in range(3)]
    paths = {proc.communicate(timeout=60)[0].strip() for proc in procs}
    assert [proc.returncode for proc in procs] == [0, 0, 0] and len(paths) == 1
    copy = Path(paths.pop())
    assert tree(copy) == tree(folder)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [copy.name]


def test_publish_keeps_a_complete_copy_and_replaces_a_leftover(tmp_path):
    target = tmp_path / "copy"
    (target).mkdir()
    (target / "half.bin").write_bytes(b"a leftover without the marker")
    staging = tmp_path / ".copy.tmp-1"
    staging.mkdir()
    (staging / "file").write_bytes(b"ours")
    (staging / FETCHED_MARKER).write_text("{}")
    assert publish_folder(staging, target) == target and tree(target) == {"file": b"ours"}
    late = tmp_path / ".copy.tmp-2"
    late.mkdir()
    (late / "file").write_bytes(b"a second fetch, finished later")
    (late / FETCHED_MARKER).write_text("{}")
    assert publish_folder(late, target) == target and tree(target) == {"file": b"ours"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


# --- choosing and reaching the store ------------------------------------------------------------

def test_open_store_from_the_url(tmp_path, monkeypatch):
    local = open_store(None, tmp_path)
    assert isinstance(local, LocalStore) and local.root == tmp_path / "store"
    assert open_store("", tmp_path).root == tmp_path / "store"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s3 = open_store("s3://models/cluster/a/", tmp_path)
    assert isinstance(s3, S3Store) and (s3.bucket, s3.prefix) == ("models", "cluster/a")
    assert open_store("s3://models", tmp_path).prefix == ""
    for url in ("http://example/x", "s3:/models", "/srv/store"):
        with pytest.raises(ValueError, match="MODEL_STORE_URL"):
            open_store(url, tmp_path)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_store_is_said_quickly_with_its_url(tmp_path, monkeypatch):
    """The endpoint comes from AWS_ENDPOINT_URL_S3, read by boto3 itself."""
    endpoint = f"http://127.0.0.1:{closed_port()}"
    for name, value in {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
                        "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    store = open_store("s3://models/prod", tmp_path)
    for call in (lambda: store.get_bytes("a"), lambda: store.put_bytes("a", b"x"), lambda: store.exists("a"),
                 lambda: store.list(""), lambda: store.fetch_folder("versions/v1", tmp_path / "cache")):
        started = time.monotonic()
        with pytest.raises(StoreUnavailable) as caught:
            call()
        assert time.monotonic() - started < 10
        assert "s3://models/prod" in str(caught.value) and endpoint in str(caught.value)
        assert caught.value.code == "store_unavailable"
    assert list((tmp_path / "cache").iterdir()) == []


def test_refused_credentials_are_store_unavailable(s3_bucket):
    server, bucket = s3_bucket
    store = S3Store(bucket, "p", client=s3_client(server, aws_secret_access_key="wrong-secret"))
    with pytest.raises(StoreUnavailable, match=f"s3://{bucket}/p"):
        store.get_bytes("anything")
    with pytest.raises(StoreUnavailable):
        store.put_bytes("anything", b"x")


def test_s3_prefixes_keep_stores_apart(s3_bucket):
    server, bucket = s3_bucket
    one, two = (S3Store(bucket, f"apart-{uuid.uuid4().hex[:6]}", client=s3_client(server)) for _ in range(2))
    one.put_bytes("k", b"1")
    two.put_bytes("k", b"2")
    assert (one.get_bytes("k"), two.get_bytes("k")) == (b"1", b"2")
    one.delete_prefix("")
    assert one.list("") == [] and two.list("") == ["k"]
    missing_bucket = S3Store(f"no-such-bucket-{uuid.uuid4().hex[:6]}", "", client=s3_client(server))
    for call in (lambda: missing_bucket.get_bytes("k"), lambda: missing_bucket.list("")):
        with pytest.raises(StoreUnavailable, match="no-such-bucket"):  # a wrong bucket is not a missing object
            call()
