"""Helpers shared by the admin tests: a tiny image-folder dataset, an admin app, waiting for jobs."""

import re
from pathlib import Path

import numpy as np
from PIL import Image

from scripts import serve_tools

PASSWORD = "correct horse battery staple"
TOKEN = "test-token-0123456789abcdef"
TINY_JOB = {"preset": "seed", "epochs": 1, "limit": 300, "batch_size": 50}
LONG_JOB = {"preset": "seed", "epochs": 300, "limit": 300, "batch_size": 50}  # cancelled or killed


def write_dataset(root, train_per_class=30, test_per_class=8, seed=0):
    """train/ and test/ class folders of 32x32 PNGs, one colour per class plus noise (learnable in
    a few steps); with a test/ folder the trainer evaluates on it, so no large validation split."""
    from ml import CIFAR10_CLASSES
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for c, name in enumerate(CIFAR10_CLASSES):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 53) % 256, (c * 97 + 60) % 256, (c * 151 + 120) % 256], dtype=np.float64)
            for i in range(count):
                pixels = base + rng.normal(0, 30, (32, 32, 3))
                Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.png")
    return Path(root)


def admin_config(tmp_path, model_dir, data_dir, **extra):
    return {"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"), "MODEL_DIR": str(model_dir),
            "WTF_CSRF_ENABLED": True, "ADMIN_PASSWORD": PASSWORD, "ADMIN_TOKEN": TOKEN,
            "TRAIN_DATA": str(data_dir), "TRAIN_THREADS": 1, "TRAIN_SUITE": False, **extra}


def csrf_token(client, path="/admin/login"):
    html = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def login(client, password=PASSWORD):
    return client.post("/admin/login", data={"password": password, "csrf_token": csrf_token(client)})


def auth_headers(token=TOKEN):
    return {"Authorization": f"Bearer {token}"}


def training(job):
    """The job once its trainer has reported a step (so it has passed start-up), else None."""
    return job if job["status"] == "running" and any(m["type"] == "step" for m in job["metrics"]) else None


def wait_for(check, timeout=60, interval=0.2, what="condition"):
    """scripts.serve_tools.wait_for with the tests' argument order and defaults."""
    return serve_tools.wait_for(check, timeout, what, interval)
