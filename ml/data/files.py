"""Files written whole or not at all, and checked by their sha256.

`atomic_path` is the one way ml writes a file in place: into a temporary file beside it (mkstemp:
a unique name, mode 0600 unless `mode` says otherwise), renamed over the target when the writing
succeeded, removed when it failed; a reader never sees half a file.
"""

import hashlib
import json
import os
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
