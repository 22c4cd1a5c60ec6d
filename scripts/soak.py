"""Soak test: the real server keeps answering under mixed load while retraining jobs run.

    make soak                     # or: python -m scripts.soak [--clients 16] [--seconds 300] [--json out.json]

Starts gunicorn (the config of `make serve`) with the shipped model on a free loopback port, an
admin token and a tiny generated training set, warms it up, then for `--seconds` (and at most
`--max-requests` requests) `--clients` keep-alive clients send a mix of photos (one or several per
request, multipart or raw body) and bad inputs (each with the 4xx it must get), while training jobs
(preset seed, 1 epoch, 300 images) run back to back through the admin API. PROMOTION_MARGIN=1 makes
every finished job go live, so workers hot-swap models under load.

The server runs with the production settings of `make serve` (gunicorn.conf.py), where a worker
is never recycled (WEB_MAX_REQUESTS=0, docs/operations.md says why): a worker that crashed, was
killed for a timeout or ran out of memory shows as a changed pid, and a leak shows in its memory.
A connection reset or refused counts as a failure like a 5xx. Memory growth is measured from the
end of a warm-up (the same mix of requests, no training, a tenth of the run, longer until every
worker did some work) to the end,
both times at rest (see settled_memory): a worker's heap grows once to a plateau as it meets
forward passes of every batch size, which is not a leak. The RSS right after start and the highest
RSS sampled during the run (every MEMORY_SAMPLE_S, requests in flight) are reported too.

Checks, all must hold (exit status 1 otherwise): no 5xx, every answer has the status it should,
no transport errors, the same worker pids at the end, each worker's RSS grew by less than 10%,
every prediction names a valid model version (listed by /api/v1/admin/versions), and at least
one training job ran. The result is printed and, with --json, written as JSON.
"""

import argparse
import io
import json
import random
import secrets
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from scripts.serve_tools import (SHIPPED_MODEL, Server, exit_on_sigterm, get_json,
                                 cpu_seconds, make_photos, multipart, new_connection, photo_file,
                                 request, worker_rss)

JOB = {"preset": "seed", "epochs": 1, "limit": 300, "batch_size": 50}
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
MAX_RSS_GROWTH = 0.10
RECONNECT_CHANCE = 0.2
WARM_CPU_S = 2.0             # the warm-up lasts until every worker has done this much work
SEVERAL_MAX_BYTES = 400_000  # photos sent 2-16 per request: 16 of them stay under the 10 MB limit
ACTIVE = ("queued", "running")
MEMORY_SAMPLE_S = 2.0
SETTLE_S = 3.0               # longer than gunicorn.conf.py's TRIM_EVERY_S
SETTLE_REQUESTS = 40         # P(a worker of 2 gets none) = 2 * 0.5**40


def write_training_set(root, per_class=(30, 8), seed=0) -> Path:
    """An image-folder dataset (train/ and test/<class>/*.png), one colour per class plus noise;
    with a test/ split the trainer evaluates on it instead of carving a validation split."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for c, name in enumerate(CLASSES):
            folder = Path(root) / split / name
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([(c * 53) % 256, (c * 97 + 60) % 256, (c * 151 + 120) % 256], dtype=np.float64)
            for i in range(count):
                pixels = (base + rng.normal(0, 40, (32, 32, 3))).clip(0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return Path(root)


def png_claiming(width, height) -> bytes:
    """A real PNG header claiming width x height: refused from the header (413), never decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) \
        + chunk(b"IEND", b"")


def bad_requests(photo) -> list:
    """[(name, method, path, body, content type, expected status)] of inputs that must be refused."""
    jpeg = io.BytesIO()
    Image.new("RGB", (256, 256), (90, 30, 200)).save(jpeg, "JPEG")
    cases = [("empty file", ("empty.jpg", b"", "image/jpeg"), 400),
             ("text renamed .jpg", ("notes.jpg", b"not a photo\n" * 20, "image/jpeg"), 415),
             ("truncated jpeg", ("cut.jpg", jpeg.getvalue()[:600], "image/jpeg"), 400),
             ("png claiming 20000x20000", ("bomb.png", png_claiming(20000, 20000), "image/png"), 413),
             ("svg", ("x.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>1</script></svg>',
                      "image/svg+xml"), 415)]
    requests = [(name, "POST", "/api/v1/predict", *multipart([file]), status) for name, file, status in cases]
    requests += [("17 files", "POST", "/api/v1/predict", *multipart([photo] * 17), 413),
                 ("no file", "POST", "/api/v1/predict", *multipart([photo], field="other"), 400),
                 ("GET on predict", "GET", "/api/v1/predict", None, None, 405),
                 ("unknown TorchServe model", "POST", "/predictions/no-such-model", photo[1], "image/jpeg", 404)]
    return requests


class Soak:
    def __init__(self, server, photos, bad, token, clients, max_requests):
        self.server, self.photos, self.bad, self.token = server, photos, bad, token
        self.clients, self.max_requests = clients, max_requests
        self.lock = threading.Lock()
        self.small = [photo for photo in photos if len(photo[1]) < SEVERAL_MAX_BYTES]
        self.sent = 0
        self.statuses, self.unexpected, self.transport_errors, self.versions = {}, [], [], {}
        self.jobs = []
        self.peak_rss = {}

    # -- clients --

    def pick(self, rng):
        """(name, method, path, body, content type, expected status, images) of one request."""
        roll = rng.random()
        if roll < 0.15:
            return (*rng.choice(self.bad), 0)
        if roll < 0.25:
            chosen = [rng.choice(self.small) for _ in range(rng.randint(2, 16))]
            return ("several photos", "POST", "/api/v1/predict", *multipart(chosen), 200, len(chosen))
        name, data, ctype = rng.choice(self.photos)
        if roll < 0.30:
            return ("raw body", "POST", f"/api/v1/predict?filename={name}", data, ctype, 200, 1)
        return ("one photo", "POST", "/api/v1/predict", *multipart([(name, data, ctype)]), 200, 1)

    def client(self, seed, deadline):
        rng, connection = random.Random(seed), None
        while time.time() < deadline:
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            name, method, path, body, ctype, expected, images = self.pick(rng)
            connection = connection or new_connection(self.server.base)
            try:
                status, answer = request(self.server.base, method, path, body, ctype, connection=connection)
            except (OSError, ValueError) as error:
                connection.close()
                connection = None
                with self.lock:
                    self.transport_errors.append(f"{name}: {type(error).__name__}: {error}")
                continue
            self.record(name, status, answer, expected, images)
            if rng.random() < RECONNECT_CHANCE:  # fresh connections now and then: every worker gets some
                connection.close()
                connection = None

    def record(self, name, status, answer, expected, images):
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status != expected or (status == 200 and len(answer.get("predictions", [])) != images):
                self.unexpected.append(f"{name}: got {status}, expected {expected}: {str(answer)[:200]}")
            elif status == 200:
                version = answer["model"]["version"]
                self.versions[version] = self.versions.get(version, 0) + 1

    # -- retraining --

    def trainer(self, deadline):
        """Training jobs back to back until the deadline; the last one is cancelled if still running."""
        job = None
        while time.time() < deadline:
            if job is None or job["status"] not in ACTIVE:
                if job is not None:
                    self.jobs.append(job)
                status, job = request(self.server.base, "POST", "/api/v1/admin/jobs", json.dumps(JOB).encode(),
                                      "application/json", {"Authorization": f"Bearer {self.token}"})
                if status != 202:
                    self.jobs.append({"status": f"refused {status}", "answer": job})
                    return
            time.sleep(1)
            job = get_json(self.server.base, f"/api/v1/admin/jobs/{job['id']}", self.token)
        self.jobs.append(self.stop_job(job))

    def stop_job(self, job):
        if job["status"] in ACTIVE:
            request(self.server.base, "POST", f"/api/v1/admin/jobs/{job['id']}/cancel",
                    headers={"Authorization": f"Bearer {self.token}"})
            for _ in range(60):
                job = get_json(self.server.base, f"/api/v1/admin/jobs/{job['id']}", self.token)
                if job["status"] not in ACTIVE:
                    break
                time.sleep(1)
        return job

    # -- memory under load --

    def sample_memory(self, deadline):
        while time.time() < deadline:
            for pid, mb in worker_rss(self.server).items():
                if mb is not None:
                    self.peak_rss[pid] = max(mb, self.peak_rss.get(pid, 0.0))
            time.sleep(MEMORY_SAMPLE_S)

    def run(self, seconds, train=True):
        deadline = time.time() + seconds
        threads = [threading.Thread(target=self.client, args=(seed, deadline)) for seed in range(self.clients)]
        if train:
            threads += [threading.Thread(target=self.trainer, args=(deadline,)),
                        threading.Thread(target=self.sample_memory, args=(deadline,))]
        start = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - start


def warm_up(server, soak, seconds) -> float:
    """The soak's mix without training for `seconds`, repeated (three times at most) until every
    worker has done WARM_CPU_S of work: a worker's memory baseline is taken once it served real load."""
    start = {pid: cpu_seconds(pid) for pid in server.workers()}
    spent = 0.0
    for _ in range(3):
        spent += soak.run(seconds, train=False)
        if all(cpu_seconds(pid) - used >= WARM_CPU_S for pid, used in start.items()):
            break
    return spent


def settled_memory(server) -> dict:
    """Worker RSS at rest, read the same way after the warm-up and at the end. Once the load has
    stopped, each worker still holds what its last requests freed (a 12 MP decode frees ~100 MB)
    until its next trim, which gunicorn.conf.py's post_request does at most every TRIM_EVERY_S: so
    wait past that, send light requests on fresh connections until every worker has answered
    (the kernel hands connections to workers at random), then read."""
    time.sleep(SETTLE_S)
    for _ in range(SETTLE_REQUESTS):
        request(server.base, "GET", "/healthz")
    return worker_rss(server)


def report(soak, server, token, rss, seconds) -> dict:
    """The summary and its checks; `rss` = worker memory {"started", "warmed", "end"}, in MiB by pid."""
    baseline, end = rss["warmed"], rss["end"]
    listed = get_json(server.base, "/api/v1/admin/versions", token)["versions"]
    valid = {str(v["version"]) for v in listed}
    growth = {str(pid): (end[pid] / before - 1) if end.get(pid) else None for pid, before in baseline.items()}
    log = server.log_text()
    summary = {
        "seconds": round(seconds, 1), "warm_up_seconds": round(rss["warm_up_seconds"], 1),
        "clients": soak.clients, "requests": sum(soak.statuses.values()),
        "statuses": {str(k): v for k, v in sorted(soak.statuses.items())},
        "five_xx": sum(v for k, v in soak.statuses.items() if k >= 500),
        "unexpected": len(soak.unexpected), "unexpected_samples": soak.unexpected[:10],
        "transport_errors": len(soak.transport_errors), "transport_samples": soak.transport_errors[:10],
        "workers_start": sorted(baseline), "workers_end": sorted(end),
        "rss_mb_started": {str(p): round(v, 1) for p, v in rss["started"].items()},
        "rss_mb_warmed": {str(p): round(v, 1) for p, v in baseline.items()},
        "rss_mb_end": {str(p): round(v, 1) for p, v in end.items() if v},
        "rss_mb_peak_under_load": {str(p): round(v, 1) for p, v in soak.peak_rss.items()},
        "rss_growth": growth, "worker_timeouts_in_log": log.count("WORKER TIMEOUT"),
        "versions_seen": soak.versions, "versions_valid": sorted(valid),
        "jobs": [{"id": j.get("id"), "status": j.get("status"), "version": j.get("version"),
                  "error": (j.get("error") or "")[-300:] or None} for j in soak.jobs],
    }
    summary["checks"] = {
        "no 5xx": summary["five_xx"] == 0,
        "every answer as expected": summary["unexpected"] == 0 and summary["transport_errors"] == 0,
        "no worker restarts": sorted(baseline) == sorted(end) and summary["worker_timeouts_in_log"] == 0,
        "RSS growth under 10%": all(g is not None and g < MAX_RSS_GROWTH for g in growth.values()),
        "every prediction names a valid version": bool(soak.versions) and set(soak.versions) <= valid,
        "a training job ran": any(j.get("status") in ("succeeded", "cancelled") for j in soak.jobs),
    }
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--warm-up", type=float, help="seconds of load before the memory baseline "
                        "(default: a tenth of --seconds, at least 10)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder served at start")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    exit_on_sigterm()

    photos = [photo_file(path, fmt) for path, fmt in make_photos(2)]
    token = secrets.token_urlsafe(24)
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        env = {"ADMIN_TOKEN": token, "TRAIN_DATA": str(write_training_set(Path(tmp) / "data")),
               "TRAIN_THREADS": "1", "PROMOTION_MARGIN": "1"}
        server = Server(Path(tmp) / "instance", model_dir=args.model, env=env)
        try:
            server.first_prediction(photos[0])
            soak = Soak(server, photos, bad_requests(photos[1]), token, args.clients, args.max_requests)
            rss = {"started": worker_rss(server)}
            rss["warm_up_seconds"] = warm_up(server, soak, args.warm_up or max(10.0, args.seconds / 10))
            rss["warmed"] = settled_memory(server)
            seconds = soak.run(args.seconds)
            rss["end"] = settled_memory(server)
            summary = report(soak, server, token, rss, seconds)
        finally:
            server.stop()
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text)
    failed = [name for name, ok in summary["checks"].items() if not ok]
    print("soak: " + ("all checks hold" if not failed else "FAILED: " + "; ".join(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
