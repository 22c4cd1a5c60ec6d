"""What the serving benchmark and the soak test share: test photos, the real gunicorn server on a
free loopback port, its workers' memory, and a small keep-alive HTTP client.

Loopback only: every URL here is http://127.0.0.1:<port>.
"""

import http.client
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = PROJECT_ROOT / "models" / "default"
DATA_TRAIN = PROJECT_ROOT / "data" / "train"
PHOTO_SET_VERSION = 1
# (width, height, format): from a 32x32 thumbnail to a 12 MP phone photo
PHOTO_KINDS = [
    (32, 32, "PNG"), (32, 32, "JPEG"), (320, 240, "WEBP"), (640, 480, "JPEG"), (800, 600, "PNG"),
    (1024, 768, "WEBP"), (1280, 960, "JPEG"), (1600, 1200, "PNG"), (2048, 1536, "JPEG"),
    (3024, 4032, "JPEG"), (4032, 3024, "JPEG"), (4032, 3024, "WEBP"),
]
# what clients mostly send (the serving goals are set on this mix): web-sized photos, 96 to 1024 px,
# PNG, WebP, JPEG and CMYK JPEG (print-workflow files)
CLIENT_KINDS = [
    (96, 96, "PNG"), (128, 96, "JPEG"), (160, 120, "WEBP"), (256, 256, "CMYK"), (320, 240, "JPEG"),
    (400, 300, "PNG"), (512, 384, "WEBP"), (600, 600, "JPEG"), (640, 480, "CMYK"), (800, 600, "WEBP"),
    (1024, 768, "JPEG"), (768, 1024, "PNG"),
]
PHOTO_SETS = {"phone": PHOTO_KINDS, "client": CLIENT_KINDS}
SUFFIX = {"JPEG": ".jpg", "CMYK": ".cmyk.jpg", "PNG": ".png", "WEBP": ".webp"}
CONTENT_TYPE = {"JPEG": "image/jpeg", "CMYK": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


# ---- photos ----

def source_images(count: int, seed: int = 0) -> list:
    """`count` real 32x32 training photos (data/train, classes in turn), or synthetic ones without data."""
    rng = random.Random(seed)
    if DATA_TRAIN.is_dir():
        classes = sorted(p for p in DATA_TRAIN.iterdir() if p.is_dir())
        files = [sorted(c.iterdir()) for c in classes]
        return [Image.open(rng.choice(files[i % len(files)])).convert("RGB") for i in range(count)]
    noise = np.random.default_rng(seed)
    return [Image.fromarray(noise.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def render(small: Image.Image, width: int, height: int, fmt: str, seed: int) -> bytes:
    """A photo-like file: the thumbnail upscaled, with a little sensor noise so it compresses like a photo."""
    image = small.resize((width, height), Image.BICUBIC)
    if width * height > 32 * 32:
        pixels = np.asarray(image, dtype=np.int16)
        pixels = pixels + np.random.default_rng(seed).integers(-4, 5, pixels.shape, dtype=np.int16)
        image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    if fmt == "CMYK":
        image.convert("CMYK").save(buffer, "JPEG", quality=88)
    else:
        image.save(buffer, fmt, **({"quality": 88} if fmt in ("JPEG", "WEBP") else {"compress_level": 6}))
    return buffer.getvalue()


def make_photos(rounds: int = 2, folder=None, kinds: str = "phone") -> list:
    """[(path, format)] of `rounds` x PHOTO_SETS[kinds] photos, written once into a cache folder."""
    folder = Path(folder or Path(tempfile.gettempdir()) / f"serve-photos-v{PHOTO_SET_VERSION}-{kinds}-{rounds}")
    folder.mkdir(parents=True, exist_ok=True)
    wanted = [(i, kind) for i, kind in enumerate(PHOTO_SETS[kinds] * rounds)]
    paths = [(folder / f"{i:03d}-{w}x{h}{SUFFIX[fmt]}", fmt) for i, (w, h, fmt) in wanted]
    if not all(path.is_file() for path, _ in paths):
        sources = source_images(len(wanted))
        for (path, fmt), (i, (w, h, _)) in zip(paths, wanted):
            partial = path.with_suffix(path.suffix + ".part")
            partial.write_bytes(render(sources[i], w, h, fmt, seed=i))
            os.replace(partial, path)
    return paths


def multipart(files, field="image", boundary=None) -> tuple:
    """(body, content type) of a multipart form with `files` = [(filename, bytes, content type)]."""
    boundary = boundary or uuid.uuid4().hex
    parts = []
    for name, data, ctype in files:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
                     f"Content-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def photo_file(path, fmt) -> tuple:
    return Path(path).name, Path(path).read_bytes(), CONTENT_TYPE[fmt]


# ---- the server ----

def wait_for(check, timeout: float, what: str, interval: float = 0.2):
    """`check()`'s first true value, polled every `interval` s; TimeoutError naming `what` after
    `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def exit_on_sigterm():
    """SIGTERM ends the script through its `finally` blocks, so the server it started stops too."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`gunicorn -c gunicorn.conf.py wsgi:app` (what `make serve` runs; another `app` or `config`
    for a benchmark's baseline) on a free loopback port, with its own instance folder and the
    production settings unless `env` says."""

    def __init__(self, instance, model_dir=SHIPPED_MODEL, env=None, log=None, app="wsgi:app",
                 config="gunicorn.conf.py", port=None):
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.instance = Path(instance)
        self.instance.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(log or self.instance.parent / f"gunicorn-{self.port}.log")
        full_env = dict(os.environ, PORT=str(self.port), INSTANCE_PATH=str(self.instance),
                        MODEL_DIR=str(model_dir))
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each server its own, under its instance
        full_env.update(env or {})
        self.started = time.perf_counter()
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(config), app], cwd=PROJECT_ROOT,
                env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def first_prediction(self, photo: tuple, timeout: float = 120) -> float:
        """Seconds from spawning gunicorn to the first answered prediction of `photo`."""
        body, ctype = multipart([photo])
        return self._wait(lambda: request(self.base, "POST", "/api/v1/predict", body, ctype, timeout=timeout)[0] == 200,
                          timeout, 0.02, "no prediction")

    def wait_for_page(self, path: str = "/", timeout: float = 90) -> float:
        """Seconds from spawning gunicorn until GET `path` answers 200 (what the tests wait for)."""
        def answered() -> bool:
            with urllib.request.urlopen(self.base + path, timeout=2) as response:
                return response.status == 200
        return self._wait(answered, timeout, 0.3, f"{path} did not answer 200")

    def _wait(self, answered, timeout: float, retry_s: float, failure: str) -> float:
        """Call `answered()` until it is true (after a refused connection or an HTTP error, again in
        `retry_s`); fails when gunicorn exits or `timeout` passes."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}: see {self.log_path}")
            try:
                if answered():
                    return time.perf_counter() - self.started
            except OSError:
                time.sleep(retry_s)
        raise RuntimeError(f"{failure} within {timeout} s: see {self.log_path}")

    def workers(self) -> list:
        return worker_pids(self.process.pid)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")


def worker_pids(master_pid: int) -> list:
    """gunicorn's worker processes: the master's children, from /proc."""
    pids = []
    for task in Path(f"/proc/{master_pid}/task").glob("*"):
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(pids)


def rss_mb(pid: int):
    """Resident memory of `pid` in MiB (VmRSS of /proc/<pid>/status), or None when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def worker_rss(server) -> dict:
    """{worker pid: RSS in MiB} of a running Server."""
    return {pid: rss_mb(pid) for pid in server.workers()}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (/proc/<pid>/stat), 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the client ----

def request(base, method, path, body=None, content_type=None, headers=None, timeout=60, connection=None):
    """One request; returns (status, parsed JSON or raw bytes). Reuses `connection` when given."""
    conn = connection or new_connection(base, timeout)
    all_headers = dict(headers or {})
    if content_type:
        all_headers["Content-Type"] = content_type
    try:
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        if connection is None:
            conn.close()
    if response.getheader("Content-Type", "").startswith("application/json"):
        return response.status, json.loads(data)
    return response.status, data


def new_connection(base, timeout=120) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(base.split("//", 1)[1], timeout=timeout)


def get_json(base, path, token=None, timeout=30):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as response:
        return json.loads(response.read())


def percentile(values, q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation, as numpy's default."""
    return float(np.percentile(values, q)) if values else float("nan")
