"""Serving benchmark: the real server under load, against the in-process ceiling on the same photos.

    make bench-serve              # or: python -m scripts.bench_serve [--cycles 2] [--json out.json]

Starts gunicorn with the shipped model on a free loopback port (the command and config of `make
serve`, its own temporary instance folder, workers never recycled during the run), warms it up,
and drives it from this process: a bounded load generator (a fixed number of requests, a time
limit) of keep-alive HTTP clients in threads, sending real photos of mixed sizes and formats
(32x32 up to 4032x3024 JPEG, PNG and WebP, made once from data/train) at concurrency 1, 4 and 16,
then 16 photos per request. The whole series runs twice: micro-batching on (the default
BATCH_WINDOW_MS) and off (BATCH_WINDOW_MS=0), each on a fresh server.

The ceiling is measured in the same run, on the same photos and cores, with as many processes and
torch threads as the server's workers: each process decodes and classifies the photos in a loop,
one photo per forward pass and 16 per forward pass, with no HTTP. "ratio" is served images/s over
the better of the two ceilings.
"""

import argparse
import http.client
import itertools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ml.nets.cardmodel import serving_tta
from scripts.serve_tools import (PHOTO_SETS, PROJECT_ROOT, SHIPPED_MODEL, Server, exit_on_sigterm, free_port,
                                 make_photos, multipart, new_connection, percentile, photo_file, request,
                                 worker_rss)

MULTI_IMAGES = 16
MULTI_MAX_SIDE = 1600      # 16 phone photos do not fit the 10 MB request limit; web-sized ones do
CONCURRENCY = (1, 4, 16)
MULTI_CONCURRENCY = 4
RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
PEER_VENV = ".venv-litserve"
PEER_REQUIREMENTS = ["litserve>=0.2,<0.3", "python-multipart"]  # the peer (form uploads need the second)


# ---- the in-process ceiling ----

def ceiling_worker(model_dir, paths, threads, batch, seconds, offset, barrier, results):
    """One process: decode + preprocess + forward over the photos for `seconds`, `batch` per pass."""
    import torch

    from ml.predict.predictor import Predictor
    torch.set_num_threads(threads)
    predictor = Predictor(model_dir)
    blobs = [Path(p).read_bytes() for p in paths]
    predictor.predict(blobs[:batch])  # warm-up
    barrier.wait()
    done, start, i = 0, time.perf_counter(), offset
    while time.perf_counter() - start < seconds:
        chunk = [blobs[(i + k) % len(blobs)] for k in range(batch)]
        predictor.predict_arrays([predictor.decode(b) for b in chunk])
        done, i = done + batch, i + batch
    results.put((done, time.perf_counter() - start))


def ceiling(model_dir, paths, processes, threads, batch, seconds) -> float:
    """Images/s of `processes` processes with `threads` torch threads each, all started together."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(processes), context.Queue()
    workers = [context.Process(target=ceiling_worker, args=(str(model_dir), [str(p) for p in paths], threads,
                                                            batch, seconds, k * len(paths) // processes,
                                                            barrier, results)) for k in range(processes)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=seconds + 300) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(done for done, _ in outcomes) / max(elapsed for _, elapsed in outcomes)


# ---- the load generator ----

class Load:
    """`total` requests from `concurrency` keep-alive clients, cycling through `bodies` in order,
    stopped early at `seconds`. Every answer must be 200 with one prediction per image."""

    def __init__(self, base, bodies, concurrency, total, seconds):
        self.base, self.bodies, self.concurrency = base, bodies, concurrency
        self.total, self.seconds = total, seconds
        self.tickets = itertools.count()
        self.lock = threading.Lock()
        self.latencies, self.errors, self.images, self.reconnects = [], [], 0, 0

    def run(self) -> dict:
        start = time.perf_counter()
        self.deadline = start + self.seconds
        threads = [threading.Thread(target=self.client) for _ in range(self.concurrency)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - start
        done = len(self.latencies) + len(self.errors)
        return {"requests": done, "errors": len(self.errors), "error_samples": self.errors[:5],
                "seconds": elapsed, "requests_per_s": done / elapsed, "images_per_s": self.images / elapsed,
                "p50_ms": percentile(self.latencies, 50) * 1000, "p95_ms": percentile(self.latencies, 95) * 1000,
                "p99_ms": percentile(self.latencies, 99) * 1000, "reconnects": self.reconnects}

    def client(self):
        connection = None
        while time.perf_counter() < self.deadline:
            ticket = next(self.tickets)
            if ticket >= self.total:
                break
            body, ctype, count = self.bodies[ticket % len(self.bodies)]
            connection = connection or new_connection(self.base)
            began = time.perf_counter()
            try:
                status, answer = self.send(connection, body, ctype)
            except (OSError, ValueError) as error:
                connection = None
                self.record(None, f"{type(error).__name__}: {error}", 0)
                continue
            ok = status == 200 and len(answer.get("predictions", [])) == count
            self.record(time.perf_counter() - began, None if ok else f"{status}: {str(answer)[:200]}", count)

    def send(self, connection, body, ctype):
        try:
            return request(self.base, "POST", "/api/v1/predict", body, ctype, connection=connection)
        except RETRYABLE:
            # the server may close an idle keep-alive connection; one fresh try, counted
            connection.close()
            with self.lock:
                self.reconnects += 1
            return request(self.base, "POST", "/api/v1/predict", body, ctype, connection=connection)

    def record(self, latency, error, images):
        with self.lock:
            if error:
                self.errors.append(error)
            else:
                self.latencies.append(latency)
                self.images += images


# ---- one server, all load levels ----

def scrape_batches(base) -> tuple:
    """(images, forward passes) so far from /metrics."""
    status, text = request(base, "GET", "/metrics")
    text = text.decode()
    total = re.search(r"^webapp_batch_images_sum (\S+)$", text, re.M)
    count = re.search(r"^webapp_batch_images_count (\S+)$", text, re.M)
    return (float(total.group(1)) if total else 0.0), (float(count.group(1)) if count else 0.0)


def measured(server, bodies, concurrency, total, seconds) -> dict:
    rss_start, batches_start = worker_rss(server), scrape_batches(server.base)
    result = Load(server.base, bodies, concurrency, total, seconds).run()
    rss_end, batches_end = worker_rss(server), scrape_batches(server.base)
    passes = batches_end[1] - batches_start[1]
    return dict(result, concurrency=concurrency, mean_batch=(batches_end[0] - batches_start[0]) / passes
                if passes else None, rss_mb={str(pid): [rss_start.get(pid), rss_end.get(pid)]
                                             for pid in sorted(set(rss_start) | set(rss_end))})


def series(label, env, photos, multi_bodies, args, work, concurrency=CONCURRENCY) -> dict:
    """Start a server with `env`, time its first prediction, warm it up, run the load levels
    (`multi_bodies` None: one photo per request only)."""
    server = Server(work / f"instance-{label}", model_dir=args.model, env=env)
    try:
        first = server.first_prediction(photo_file(*photos[0]))
        singles = [(*multipart([photo_file(p, fmt)]), 1) for p, fmt in photos]
        # warm-up: every photo twice at full concurrency, then 16-image requests: forward passes of
        # every batch size the run will see, so memory is at its plateau before it is measured
        Load(server.base, singles, max(concurrency), len(singles) * 2, 300).run()
        if multi_bodies:
            Load(server.base, multi_bodies, MULTI_CONCURRENCY, MULTI_CONCURRENCY * 2, 300).run()
        workers = server.workers()
        rows = [dict(measured(server, singles, c, requests_at(c, singles, args), args.seconds),
                     path="1 image/request") for c in concurrency]
        if multi_bodies:
            rows.append(dict(measured(server, multi_bodies, MULTI_CONCURRENCY, len(multi_bodies) * args.cycles,
                                      args.seconds), path=f"{MULTI_IMAGES} images/request"))
        restarted = workers != server.workers()
    finally:
        server.stop()
    return {"label": label, "env": env, "first_prediction_s": first, "workers": len(workers),
            "worker_restarts": restarted, "rows": rows}


def requests_at(concurrency, singles, args) -> int:
    return len(singles) * args.cycles * max(1, concurrency // 4)


# ---- the LitServe peer ----

def peer_environment() -> Path:
    """`.venv-litserve`: LitServe 0.2.x in a virtual environment of its own, which sees the
    product's packages (torch, Pillow, safetensors) through a .pth file instead of a second
    multi-GB torch; the product's requirements never include it."""
    venv = PROJECT_ROOT / PEER_VENV
    python = venv / "bin" / "python"
    if subprocess.run([str(python), "-c", "import litserve, multipart"], capture_output=True).returncode \
            if python.exists() else 1:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        site = next((venv / "lib").glob("python3*/site-packages"))
        (site / "product.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *PEER_REQUIREMENTS], check=True)
    return python


def peer_series(label, python, tta, workers, photos, args, work) -> dict:
    """The LitServe peer (scripts/litserve_peer.py) with as many inference processes (1 torch thread
    each) as our server has workers, under one photo per request at the top concurrency."""
    port = free_port()
    log = open(work / f"litserve-{port}.log", "wb")
    process = subprocess.Popen([str(python), "-m", "scripts.litserve_peer", "--model", args.model, "--port", str(port),
                                "--tta", str(tta), "--workers", str(workers)],
                               cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        singles = [(*multipart([photo_file(p, fmt)]), 1) for p, fmt in photos]
        wait_until_answers(base, singles[0], process)
        Load(base, singles, max(CONCURRENCY), len(singles) * 2, 300).run()  # warm-up, as for ours
        c = max(CONCURRENCY)
        row = dict(Load(base, singles, c, requests_at(c, singles, args), args.seconds).run(), concurrency=c,
                   path="1 image/request", mean_batch=None, rss_mb={})
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    return {"label": label, "tta": tta, "rows": [row]}


def wait_until_answers(base, single, process, timeout=180):
    body, ctype, _ = single
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the LitServe peer exited with {process.returncode}")
        try:
            status, answer = request(base, "POST", "/api/v1/predict", body, ctype, timeout=30)
        except OSError:
            status = None
        if status == 200:
            return
        if status is not None:
            raise RuntimeError(f"the LitServe peer answered {status}: {answer}")
        time.sleep(0.5)
    raise RuntimeError(f"the LitServe peer did not answer within {timeout} s")


def multi_bodies(photos) -> list:
    """Requests of 16 web-sized photos each, one starting at every such photo."""
    small = [p for p in photos if max(map(int, re.findall(r"-(\d+)x(\d+)\.", p[0].name)[0])) <= MULTI_MAX_SIDE]
    bodies = []
    for start in range(len(small)):
        chosen = [small[(start + k) % len(small)] for k in range(MULTI_IMAGES)]
        bodies.append((*multipart([photo_file(p, fmt) for p, fmt in chosen]), MULTI_IMAGES))
    return bodies, small


# ---- report ----

def goals(ours, off, peers, ceilings, cards_tta, level) -> str:
    """The issue's goals at concurrency 16, one photo per request, against this run's figures."""
    top = next(r for r in ours["rows"] if r["concurrency"] == max(CONCURRENCY) and r["path"] == "1 image/request")
    lines = ["| goal | measured | met |", "|---|---|---|"]

    def goal(text, measured, met):
        lines.append(f"| {text} | {measured} | {'yes' if met else '**no**'} |")
    goal("at least 100 photos/s", f"{top['images_per_s']:.1f}", top["images_per_s"] >= 100)
    others = []
    for peer in peers:
        row = peer["rows"][0]
        ratio = top["images_per_s"] / row["images_per_s"]
        if peer["tta"] == level:  # the goal's "equal TTA": the peer runs the level our policy tops out at
            goal(f"at least 2x the LitServe peer ({peer['label']})", f"{ratio:.2f}x ({row['images_per_s']:.1f} "
                 f"photos/s, {row['errors']} errors)", ratio >= 2)
        else:
            others.append(f"ours over {peer['label']} (not equal TTA): {ratio:.2f}x")
    goal("p99 at most 4x p50", f"{top['p99_ms'] / top['p50_ms']:.2f}", top["p99_ms"] <= 4 * top["p50_ms"])
    goal("zero errors", str(top["errors"]), top["errors"] == 0)
    ratio = top["images_per_s"] / ceilings["single"]
    goal("at least 0.8 of the in-process ceiling", f"{ratio:.2f}", ratio >= 0.8)
    lines.append(f"\nserved TTA policy: {cards_tta}; batching off at concurrency 16: "
                 f"{off['rows'][0]['images_per_s']:.1f} photos/s" + "".join(f"; {o}" for o in others))
    return "\n".join(lines)


def table(results, ceilings) -> str:
    lines = ["| batching | request | concurrency | requests | errors | req/s | images/s | p50 ms | p95 ms | "
             "p99 ms | p99/p50 | images/forward | ratio to ceiling | worker RSS MiB start -> end |",
             "|" + "---|" * 14]
    for result in results:
        for row in result["rows"]:
            best = ceilings["multi" if row["path"].startswith(str(MULTI_IMAGES)) else "single"]
            rss = ", ".join(f"{a:.0f} -> {b:.0f}" for a, b in row["rss_mb"].values() if a and b)
            lines.append(
                f"| {result['label']} | {row['path']} | {row['concurrency']} | {row['requests']} | "
                f"{row['errors']} | {row['requests_per_s']:.1f} | {row['images_per_s']:.1f} | {row['p50_ms']:.0f} | "
                f"{row['p95_ms']:.0f} | {row['p99_ms']:.0f} | {row['p99_ms'] / row['p50_ms']:.2f} | "
                f"{row['mean_batch'] or 0:.1f} | {row['images_per_s'] / best:.2f} | {rss} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=2,
                        help="requests per level: this many passes over the photos (x concurrency/4 from 4 up)")
    parser.add_argument("--seconds", type=float, default=60, help="time limit of each load level")
    parser.add_argument("--ceiling-seconds", type=float, default=15, help="length of each ceiling measurement")
    parser.add_argument("--photos", default="client", choices=sorted(PHOTO_SETS),
                        help="client: 96-1024 px PNG, WebP, JPEG, CMYK (the goals' mix); phone: up to 12 MP")
    parser.add_argument("--rounds", type=int, default=4, help="photos: this many of each of the 12 kinds")
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder (default: the shipped model)")
    parser.add_argument("--no-peer", action="store_true", help="skip the LitServe peer")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    exit_on_sigterm()

    photos = make_photos(args.rounds, kinds=args.photos)
    multi, small = multi_bodies(photos)
    card = json.loads((Path(args.model) / "card.json").read_text())
    level, confident_at = serving_tta(card)
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        ours = series("on", {}, photos, multi, args, work)
        off = series("off", {"BATCH_WINDOW_MS": "0"}, photos, None, args, work, concurrency=[max(CONCURRENCY)])
        layout = series("on, 1 worker x 2 threads", {"WEB_WORKERS": "1", "TORCH_THREADS": "2"}, photos, None,
                        args, work, concurrency=[max(CONCURRENCY)])
        peers = []
        if not args.no_peer:
            python = peer_environment()
            peers = [peer_series(f"LitServe, TTA {tta}", python, tta, ours["workers"], photos, args, work)
                     for tta in sorted({level, 0}, reverse=True)]
    processes, threads = ours["workers"], 1  # gunicorn.conf.py: 1 torch thread per worker
    paths = [p for p, _ in photos]
    ceilings = {"single, 1 per forward": ceiling(args.model, paths, processes, threads, 1, args.ceiling_seconds),
                "single, 16 per forward": ceiling(args.model, paths, processes, threads, 16, args.ceiling_seconds),
                "multi, 16 per forward": ceiling(args.model, [p for p, _ in small], processes, threads, 16,
                                                 args.ceiling_seconds)}
    best = {"single": max(ceilings["single, 1 per forward"], ceilings["single, 16 per forward"]),
            "multi": ceilings["multi, 16 per forward"]}
    results = [ours, off, layout, *peers]
    policy = f"level {level}" + (f", extra views below {confident_at:.0%} confidence" if confident_at else "")
    print(f"\nphotos: {len(photos)} {args.photos} photos ({len(small)} in the 16-image requests); "
          f"{processes} workers x {threads} torch thread; model {args.model}, TTA {policy}")
    print("in-process ceiling (decode + preprocess + forward, no HTTP, "
          f"{processes} processes x {threads} thread), images/s: "
          + ", ".join(f"{name}: {value:.1f}" for name, value in ceilings.items()))
    for result in (ours, off, layout):
        print(f"batching {result['label']}: first prediction {result['first_prediction_s']:.1f} s after starting "
              f"gunicorn; worker restarts: {'yes' if result['worker_restarts'] else 'none'}")
    print()
    print(table(results, best))
    print()
    print(goals(ours, off, peers, best, policy, level))
    if args.json:
        Path(args.json).write_text(json.dumps({"ceilings": ceilings, "results": results}, indent=1))


if __name__ == "__main__":
    main()
