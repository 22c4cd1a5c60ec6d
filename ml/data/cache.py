"""The tensor cache: what is slow to make (decoded image folders, upload round trips, the suite's
client variants) kept in a safetensors file named by what it was made from, under the dataset's
.cache folder."""

import hashlib
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ml.data.files import atomic_path


def content_key(images: torch.Tensor, salt: str) -> str:
    """A short hash of uint8 images' bytes and `salt` (what else the cached result depends on)."""
    return hashlib.sha256(images.numpy().tobytes() + salt.encode()).hexdigest()[:16]


def cached_tensors(path: Path, build) -> dict:
    """The tensors stored at `path`, or those `build()` returns, stored there first. DDP ranks may
    build the same file at once: each writes its own temporary file and the last rename wins."""
    if path.is_file():
        return load_file(path)
    tensors = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, mode=0o644) as tmp:
        save_file(tensors, str(tmp))
    return tensors
