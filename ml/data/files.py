"""Files written whole or not at all, and checked by their sha256 (standard library only: the web
app's processes import it without torch).

`atomic_path` is the one way ml writes a file in place: into a temporary file beside it (mkstemp:
a unique name, mode 0600 unless `mode` says otherwise), renamed over the target when the writing
succeeded, removed when it failed; a reader never sees half a file. `atomic_folder` does the same
for a folder (a model folder: weights, card, gallery).
"""

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, mode: int = None):
    """A temporary path beside `path` for the block to write; renamed over `path` (after a chmod to
    `mode` when given) when the block ends, removed when it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        yield Path(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_folder(path):
    """A staging folder beside `path` for the block to fill; when the block ends it replaces any
    folder at `path` (its files made 0644, its folders 0755), and it is removed when the block raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        yield staging
        for file in staging.rglob("*"):
            os.chmod(file, 0o755 if file.is_dir() else 0o644)  # mkstemp makes 0600 files
        os.chmod(staging, 0o755)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(staging, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_json_atomic(path, data, mode: int = None):
    """`data` as indented JSON at `path`, flushed to disk before it replaces the old file."""
    with atomic_path(path, mode) as tmp, open(tmp, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
