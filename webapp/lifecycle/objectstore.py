"""The object store: model versions, feedback photos and resume checkpoints, kept where every host
can reach them. `MODEL_STORE_URL` unset: `<instance>/store` (one host, today's default);
`s3://bucket/prefix`: any S3-compatible store (AWS, SeaweedFS, MinIO) through boto3, which reads
the endpoint (AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL) and the credentials (AWS_ACCESS_KEY_ID, ...)
from the environment itself.

Keys are relative POSIX paths (`versions/<id>/model.safetensors`). A version is an immutable folder:
`put_folder` uploads its files, then `MANIFEST.json` ({relative path: sha256}) last, so a reader that
finds the manifest finds every file; `fetch_folder` gives a local copy checked against it, cached.

No Flask, no torch: the web app's processes, the job runner and scripts import it alike.
"""

import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ml.data.files import atomic_path, sha256_file
from webapp.lifecycle.errors import LifecycleError

MANIFEST = "MANIFEST.json"
FETCHED_MARKER = ".fetched"  # written last into a fetched copy: its presence means "complete and checked"
CHUNK = 1 << 20


class StoreError(LifecycleError):
    """What the store refuses or cannot do; the message names the key or the store's URL."""


class ObjectMissing(StoreError):
    def __init__(self, key: str):
        super().__init__(f"no object {key!r} in the store", "not_found")
        self.key = key


class ObjectExists(StoreError):
    """A version's manifest is there already: versions never change once written."""

    def __init__(self, key: str):
        super().__init__(f"{key!r} exists in the store and is never overwritten", "refused")
        self.key = key


class DigestMismatch(StoreError):
    """A stored file that is not what its manifest says (changed, missing, or not listed)."""

    def __init__(self, key: str, expected, got):
        super().__init__(f"{key}: the manifest says sha256 {expected or '(no such file)'}, "
                         f"the store holds {got or '(no such file)'}", "damaged")
        self.key, self.expected, self.got = key, expected, got


class StoreUnavailable(StoreError):
    """The store could not be reached or refused us (network, credentials, bucket): not our data's fault."""

    def __init__(self, url: str, reason):
        super().__init__(f"object store {url} unavailable: {reason}", "store_unavailable")
        self.url = url


def check_key(key: str, allow_empty: bool = False) -> str:
    """`key` as a clean relative POSIX path, or ValueError. Parts starting with '.' are refused too:
    the local store's temporary files are named so, and '..' must never climb out of the root."""
    if allow_empty and key in ("", "/"):
        return ""
    if not isinstance(key, str) or not key:
        raise ValueError(f"store key must be a non-empty string, not {key!r}")
    if key.startswith("/") or "\\" in key or "\x00" in key:
        raise ValueError(f"store key {key!r} must be a relative POSIX path")
    parts = (key[:-1] if allow_empty and key.endswith("/") else key).split("/")
    for part in parts:
        if not part:
            raise ValueError(f"store key {key!r} has an empty part")
        if part.startswith("."):
            raise ValueError(f"store key {key!r} has a part starting with '.' ({part!r})")
    return "/".join(parts)


def join_key(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix else name


def cache_name(key_prefix: str) -> str:
    """A file-system-safe folder name for a key prefix, distinct for distinct prefixes."""
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", key_prefix)[-80:]
    return f"{readable}-{hashlib.sha256(key_prefix.encode()).hexdigest()[:12]}"


def open_store(url, instance):
    """The store `MODEL_STORE_URL` names: unset or empty -> `<instance>/store`; `s3://bucket/prefix` -> S3."""
    if not url:
        return LocalStore(Path(instance) / "store")
    match = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not match:
        raise ValueError(f"MODEL_STORE_URL {url!r}: expected s3://bucket/prefix (or unset for the instance folder)")
    bucket, prefix = match.groups()
    return S3Store(bucket, prefix.strip("/"))


class ObjectStore:
    """What both stores share: immutable folders with digests, built on the per-store primitives
    put_bytes/get_bytes/put_file/get_file/exists/list/delete/delete_prefix and put_new."""

    url = "?"

    def put_folder(self, key_prefix: str, folder) -> dict:
        """Upload every file under `folder` to `<key_prefix>/...`, then its manifest last; returns
        the manifest. ObjectExists when the manifest is there already (checked first, so an existing
        version's files are never overwritten; put_new closes the race between two writers)."""
        key_prefix, folder = check_key(key_prefix), Path(folder)
        manifest_key = join_key(key_prefix, MANIFEST)
        if self.exists(manifest_key):
            raise ObjectExists(manifest_key)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        manifest = {}
        for path in files:
            rel = check_key(path.relative_to(folder).as_posix())
            if rel == MANIFEST:
                raise ValueError(f"{path}: a folder to store may not hold its own {MANIFEST}")
            manifest[rel] = sha256_file(path)
            self.put_file(join_key(key_prefix, rel), path)
        self.put_new(manifest_key, json.dumps(manifest, indent=1, sort_keys=True).encode())
        return manifest

    def read_manifest(self, key_prefix: str) -> dict:
        manifest_key = join_key(check_key(key_prefix), MANIFEST)
        raw = self.get_bytes(manifest_key)
        try:
            manifest = json.loads(raw)
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
            for rel, digest in manifest.items():
                check_key(rel)  # a tampered manifest must not write outside the copy
                if not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                    raise ValueError(f"{rel}: {digest!r} is not a sha256")
        except ValueError as error:
            raise DigestMismatch(manifest_key, "a manifest {path: sha256}", f"an unusable file ({error})") from None
        return manifest

    def fetch_folder(self, key_prefix: str, cache_root) -> Path:
        """A local, verified copy of the folder at `key_prefix`: `<cache_root>/<safe name>`. A cached
        copy (its marker present) is returned without contacting the store; otherwise the files are
        downloaded into a staging folder, each checked against the manifest, and the folder renamed
        into place. DigestMismatch (staging removed) on a changed, missing or unlisted file."""
        key_prefix = check_key(key_prefix)
        target = Path(cache_root) / cache_name(key_prefix)
        if (target / FETCHED_MARKER).is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
        try:
            manifest = self.read_manifest(key_prefix)
            self.check_listing(key_prefix, manifest)
            for rel, expected in manifest.items():
                path = staging / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                self.get_file(join_key(key_prefix, rel), path)
                got = sha256_file(path)
                if got != expected:
                    raise DigestMismatch(join_key(key_prefix, rel), expected, got)
            (staging / FETCHED_MARKER).write_text(json.dumps(manifest, sort_keys=True))
            return publish_folder(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def check_listing(self, key_prefix: str, manifest: dict):
        """The stored files are exactly the manifest's: one missing or one extra is refused before
        anything is downloaded."""
        stored = {key[len(key_prefix) + 1:] for key in self.list(key_prefix)} - {MANIFEST}
        missing, extra = sorted(set(manifest) - stored), sorted(stored - set(manifest))
        if missing:
            raise DigestMismatch(join_key(key_prefix, missing[0]), manifest[missing[0]], None)
        if extra:
            raise DigestMismatch(join_key(key_prefix, extra[0]), None, "a file the manifest does not list")


def publish_folder(staging: Path, target: Path) -> Path:
    """Rename a complete staging folder to `target`. Another process may have fetched the same
    version meanwhile: a complete copy there is kept (and ours dropped); an incomplete leftover (no
    marker, e.g. copied by hand) is moved aside first. Files 0644, folders 0755: web workers may run
    as another user than the job that fetched."""
    for path in staging.rglob("*"):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    os.chmod(staging, 0o755)
    for _ in range(3):
        try:
            os.rename(staging, target)  # fails when target is a non-empty folder: never replaces a good copy
            return target
        except OSError:
            if (target / FETCHED_MARKER).is_file():
                shutil.rmtree(staging, ignore_errors=True)
                return target
            if target.exists():
                aside = target.with_name(f".{target.name}.old-{os.getpid()}")
                os.rename(target, aside)
                shutil.rmtree(aside, ignore_errors=True)
    raise StoreError(f"{target}: could not put the fetched copy in place", "refused")


class LocalStore(ObjectStore):
    """Objects as files under `root` (the instance folder's `store/`), each written to a temporary
    file and renamed, so a reader sees a whole object or none."""

    def __init__(self, root):
        self.root = Path(root)
        self.url = f"file://{self.root}"

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextmanager
    def errors(self):
        """A file system that fails (full, read-only, permissions) is an unavailable store."""
        try:
            yield
        except StoreError:
            raise
        except FileNotFoundError:
            raise
        except OSError as error:
            raise StoreUnavailable(self.url, error) from None

    def write(self, key: str, data: bytes = None, source=None, exclusive: bool = False):
        """Write `data` (or copy the file `source`) at `key`: temporary file, fsync, then rename,
        or, when `exclusive`, a hard link that fails if the key exists (no overwrite, atomically)."""
        path = self.path(key)
        with self.errors():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as f:
                    if source is None:
                        f.write(data)
                    else:
                        with open(source, "rb") as src:
                            shutil.copyfileobj(src, f, CHUNK)
                    f.flush()
                    os.fsync(f.fileno())
                os.chmod(tmp, 0o644)
                if exclusive:
                    try:
                        os.link(tmp, path)
                    except FileExistsError:
                        raise ObjectExists(key) from None
                else:
                    os.replace(tmp, path)
            finally:
                Path(tmp).unlink(missing_ok=True)

    def put_bytes(self, key: str, data: bytes):
        self.write(key, data=bytes(data))

    def put_new(self, key: str, data: bytes):
        self.write(key, data=bytes(data), exclusive=True)

    def put_file(self, key: str, path):
        self.write(key, source=path)

    def get_bytes(self, key: str) -> bytes:
        path = self.path(key)
        try:
            with self.errors():
                return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            raise ObjectMissing(key) from None

    def get_file(self, key: str, path):
        source = self.path(key)
        try:
            with self.errors(), open(source, "rb") as src, atomic_path(path) as tmp, open(tmp, "wb") as f:
                shutil.copyfileobj(src, f, CHUNK)
        except (FileNotFoundError, IsADirectoryError):
            if not source.is_file():
                raise ObjectMissing(key) from None
            raise

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def list(self, prefix: str = "") -> list:
        """Every key under the folder `prefix` ("" for all), sorted; temporary files left out."""
        prefix = check_key(prefix, allow_empty=True)
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        with self.errors():
            keys = [p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file()]
        return sorted(k for k in keys if not any(part.startswith(".") for part in k.split("/")))

    def delete(self, key: str):
        with self.errors():
            self.path(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str):
        """Every key under the folder `prefix`; the whole store when prefix is ""."""
        prefix = check_key(prefix, allow_empty=True)
        base = self.root / prefix if prefix else self.root
        with self.errors():
            if base.is_dir():
                shutil.rmtree(base)
            elif base.is_file():
                base.unlink()


class S3Store(ObjectStore):
    """Objects in an S3 bucket under `prefix`. boto3 finds the endpoint and credentials in the
    environment; retries and timeouts are kept small so an unreachable store is said in seconds,
    not after boto3's minutes of back-off."""

    def __init__(self, bucket: str, prefix: str = "", client=None):
        self.bucket, self.prefix = bucket, check_key(prefix, allow_empty=True)
        self.client = client or make_client()
        endpoint = getattr(getattr(self.client, "meta", None), "endpoint_url", None)
        self.url = f"s3://{bucket}/{self.prefix}" + (f" ({endpoint})" if endpoint else "")

    def full(self, key: str) -> str:
        return join_key(self.prefix, check_key(key))

    @contextmanager
    def errors(self, key: str = None):
        """botocore's failures as ours: 404 (NoSuchKey) -> ObjectMissing(key); a failed condition
        (If-None-Match) -> ObjectExists(key); anything else, NoSuchBucket included, -> StoreUnavailable
        naming the URL. (HEAD answers a bare 404 for a missing bucket too, so exists() says False there.)"""
        from botocore.exceptions import BotoCoreError, ClientError
        try:
            yield
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":  # a misconfigured store, not a missing object
                raise StoreUnavailable(self.url, error) from None
            if key is not None and (code in ("404", "NoSuchKey", "NotFound") or status == 404):
                raise ObjectMissing(key) from None
            if key is not None and (code in ("412", "PreconditionFailed") or status == 412):
                raise ObjectExists(key) from None
            raise StoreUnavailable(self.url, error) from None
        except BotoCoreError as error:
            raise StoreUnavailable(self.url, error) from None

    def put_bytes(self, key: str, data: bytes):
        with self.errors():
            self.client.put_object(Bucket=self.bucket, Key=self.full(key), Body=bytes(data))

    def put_new(self, key: str, data: bytes):
        """Written only if absent (If-None-Match: *): of two writers of one version, one wins."""
        with self.errors(key):
            self.client.put_object(Bucket=self.bucket, Key=self.full(key), Body=bytes(data), IfNoneMatch="*")

    def put_file(self, key: str, path):
        with self.errors(), open(path, "rb") as f:
            self.client.put_object(Bucket=self.bucket, Key=self.full(key), Body=f)

    def get_bytes(self, key: str) -> bytes:
        with self.errors(key):
            return self.client.get_object(Bucket=self.bucket, Key=self.full(key))["Body"].read()

    def get_file(self, key: str, path):
        with self.errors(key):
            body = self.client.get_object(Bucket=self.bucket, Key=self.full(key))["Body"]
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                for chunk in body.iter_chunks(CHUNK):
                    f.write(chunk)

    def exists(self, key: str) -> bool:
        try:
            with self.errors(key):
                self.client.head_object(Bucket=self.bucket, Key=self.full(key))
        except ObjectMissing:
            return False
        return True

    def list(self, prefix: str = "") -> list:
        """Every key under the folder `prefix` ("" for all), sorted, relative to the store's prefix."""
        prefix = check_key(prefix, allow_empty=True)
        folder = join_key(self.prefix, prefix)
        start = len(self.prefix) + 1 if self.prefix else 0
        keys = []
        with self.errors():
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{folder}/" if folder else "")
            for page in pages:
                keys.extend(item["Key"][start:] for item in page.get("Contents", []))
        return sorted(keys)

    def delete(self, key: str):
        with self.errors():
            self.client.delete_object(Bucket=self.bucket, Key=self.full(key))

    def delete_prefix(self, prefix: str):
        """Every key under the folder `prefix`, up to 1000 a request."""
        keys = self.list(prefix)
        with self.errors():
            for start in range(0, len(keys), 1000):
                batch = [{"Key": join_key(self.prefix, k)} for k in keys[start:start + 1000]]
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
                if answer.get("Errors"):
                    raise StoreUnavailable(self.url, f"could not delete {answer['Errors'][0]}")


def make_client(**overrides):
    """An S3 client from the environment (endpoint, credentials, region), with a 2 s connect timeout
    and 2 attempts. Path-style addressing: S3-compatible servers on an IP (SeaweedFS, MinIO) have no
    per-bucket host names, and AWS still answers it."""
    import boto3
    from botocore.config import Config
    config = Config(connect_timeout=2, read_timeout=30, retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"})
    return boto3.client("s3", config=config, **overrides)
