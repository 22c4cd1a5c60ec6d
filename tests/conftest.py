"""Shared fixtures: small model folders and images made here, the real data when present,
the Flask app and client, a real gunicorn server, and Debian's Chromium for Playwright."""

import io
import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy
import torch
from PIL import Image

from scripts.serve_tools import Server
from webapp.lifecycle import db

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = PROJECT_ROOT / "data"
SHIPPED_MODEL = PROJECT_ROOT / "models" / "default"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
# Browser tests take screenshots into a gitignored folder, so running the tests never changes
# tracked files; `make screenshots` (UPDATE_SCREENSHOTS=1) refreshes the ones in docs/screenshots/ that
# README and docs/ show.
README_SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"
TEST_SCREENSHOTS = PROJECT_ROOT / "test-results" / "screenshots"

torch.set_num_threads(1)  # the suite runs beside other work on 2 cores


def screenshot_path(name: str) -> str:
    folder = README_SCREENSHOTS if os.environ.get("UPDATE_SCREENSHOTS") == "1" else TEST_SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder / name)


# A card "novelty" section (ml/nets/novelty.py) for fixture models: an untrained net's top probability
# is far below 1, so with the msp score (minus it) a threshold of -1 recognises no photo at all.
REFUSE_EVERYTHING = {"method": "msp", "threshold": -1.0, "keep_share": 0.95, "fitted_on": "no images (a fixture)"}


def make_model_dir(path, arch="airnet", seed=0, version="test-1", novelty=None):
    """An untrained but complete model folder (weights + card), built in a second; `novelty`, when
    given, is the card's "none of these" section."""
    from ml import CIFAR10_CLASSES
    from ml.data.sources import CIFAR_MEAN, CIFAR_STD
    from ml.nets.modelfile import write_model_dir
    from ml.nets.models import build_model

    torch.manual_seed(seed)
    kwargs = {"widths": [8, 16, 16]} if arch == "airnet" else {}
    model = build_model(arch, **kwargs)
    card = {"name": f"test-{arch}", "version": version, "arch": {"name": arch, "kwargs": kwargs},
            "classes": list(CIFAR10_CLASSES), "input_size": 32, "tta": 0,
            "normalization": {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD)}}
    if novelty is not None:
        card["novelty"] = novelty
    write_model_dir(path, model, card)
    return Path(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def refusing_model_dir(tmp_path_factory):
    """A tiny model whose card threshold says "none of these" to every photo."""
    return make_model_dir(tmp_path_factory.mktemp("models") / "refusing", novelty=REFUSE_EVERYTHING)


@pytest.fixture(scope="session")
def real_data_dir():
    if not (DATA_DIR / "train").is_dir():
        pytest.skip("data/train is missing: run `make data` (needs ../shared/datasets/cifar10-train-jpeg.tar.gz)")
    return DATA_DIR


@pytest.fixture(scope="session")
def shipped_model_dir():
    if not (SHIPPED_MODEL / "card.json").is_file():
        pytest.fail("models/default is missing: the shipped model must be committed")
    return SHIPPED_MODEL


def image_bytes(fmt="JPEG", size=(64, 48), color=(200, 30, 30), mode="RGB", **save_args) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture
def app(tmp_path, tiny_model_dir):
    from webapp import create_app
    app = create_app({"TESTING": True, "INSTANCE_PATH": str(tmp_path / "instance"),
                      "MODEL_DIR": str(tiny_model_dir), "WTF_CSRF_ENABLED": True})
    yield app


@pytest.fixture
def client(app):
    return app.test_client()


def start_server(instance_path, model_dir=SHIPPED_MODEL, env_extra=None, workers=1) -> Server:
    """The real gunicorn server (scripts.serve_tools.Server: a free loopback port, `workers` workers
    by WEB_WORKERS), once `/` answers; `.base` is its URL, `.stop()` stops it."""
    server = Server(instance_path, model_dir, env={"WEB_WORKERS": str(workers), **(env_extra or {})})
    try:
        server.wait_for_page("/", timeout=90)
    except RuntimeError:
        server.stop()
        raise
    return server


@pytest.fixture(scope="module")
def live_server(tmp_path_factory, shipped_model_dir):
    """gunicorn serving the shipped model; yields the base URL."""
    instance = tmp_path_factory.mktemp("live") / "instance"
    instance.mkdir()
    server = start_server(instance, shipped_model_dir)
    yield server.base
    server.stop()


CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync")


@pytest.fixture(scope="session")
def playwright_driver():
    """One Playwright driver for the whole session: its sync API allows only one at a time."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: `make browser` installs Debian's chromium as root")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        yield playwright


def launch_chromium(playwright_driver, *extra_args):
    return playwright_driver.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=[*CHROMIUM_ARGS, *extra_args])


@pytest.fixture(scope="session")
def browser(playwright_driver):
    """Headless Debian Chromium driven by Playwright (installed by `make browser`)."""
    browser = launch_chromium(playwright_driver)
    yield browser
    browser.close()


def watched_page(browser, base):
    """A page of a fresh 1280x900 context that records its console and page errors (`.errors`)
    and every request to anything but `base` and the page's own blob:/data: URLs (`.foreign`).
    Returns (context, page); close the context when done."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.errors, page.foreign = [], []
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    local = (base + "/", "blob:" + base, "data:")
    page.on("request", lambda r: r.url.startswith(local) or page.foreign.append(r.url))
    return context, page


def write_tiny_dataset(root, per_class=24, size=32, seed=0):
    """An image-folder dataset (train/<class>/*.png) where each class has its own colour, plus
    noise: learnable in a few steps, so tests can see the loss fall."""
    import numpy as np
    from ml import CIFAR10_CLASSES
    rng = np.random.default_rng(seed)
    for c, name in enumerate(CIFAR10_CLASSES):
        folder = Path(root) / "train" / name
        folder.mkdir(parents=True, exist_ok=True)
        base = np.array([(c * 53) % 256, (c * 97 + 60) % 256, (c * 151 + 120) % 256], dtype=np.float64)
        for i in range(per_class):
            pixels = base + rng.normal(0, 40, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:04d}.png")
    return Path(root)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    return write_tiny_dataset(tmp_path_factory.mktemp("tinydata"))


# The servers of the multi-host tests (scripts/cluster/servers.py): PostgreSQL, Redis, SeaweedFS's S3.
# Where one cannot run here they skip, except in CI (CI=true), where that is a broken `make servers`.
def require_cluster_server(kind):
    """The class of server `kind` ("postgres", "redis", "s3") once it can run here; else skips, or
    fails in CI."""
    from scripts.cluster.servers import SERVERS
    cls = SERVERS[kind]
    why = cls.unavailable()
    if why:
        if os.environ.get("CI", "").lower() in ("true", "1"):
            pytest.fail(f"{cls.name} cannot run in CI: {why}")
        pytest.skip(f"{cls.name} cannot run here: {why}")
    return cls


def cluster_folder(kind) -> str:
    """A scratch folder under /tmp: the user postgres cannot reach pytest's tmp_path (0700 root parents)."""
    import tempfile
    return tempfile.mkdtemp(prefix=f"pc-{kind}-")


def _session_server(kind):
    import shutil
    cls = require_cluster_server(kind)
    folder = cluster_folder(kind)
    try:
        with cls(folder) as server:
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """PostgreSQL on 127.0.0.1 (scripts.cluster.servers.Postgres): `.url` for SQLAlchemy."""
    yield from _session_server("postgres")


@pytest.fixture
def postgres_url(postgres_server):
    """A database of its own on the session's PostgreSQL server, dropped after the test."""
    name = f"t{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(postgres_server.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = postgres_server.url.rsplit("/", 1)[0] + "/" + name
    yield url
    for key in [k for k in db._engines if k[1] == url]:
        db._engines.pop(key).dispose()
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"DROP DATABASE {name} WITH (FORCE)"))
    admin.dispose()


@pytest.fixture(scope="session")
def redis_server():
    """Redis on 127.0.0.1 (scripts.cluster.servers.Redis): `.url` for redis-py and RQ."""
    yield from _session_server("redis")


@pytest.fixture(scope="session")
def s3_server():
    """SeaweedFS's S3 gateway on 127.0.0.1 (scripts.cluster.servers.SeaweedS3): `.endpoint`,
    `.access_key`, `.secret_key`, `.client()`, `.url` (its bucket, made at start)."""
    yield from _session_server("s3")
