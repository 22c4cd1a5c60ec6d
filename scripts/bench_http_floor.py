"""What a served photo costs before the model sees it: the real server against a floor app.

    python -m scripts.bench_http_floor [--concurrency 16] [--cycles 40]

Both run under gunicorn with gunicorn.conf.py's settings (workers, request threads, access log,
malloc trim), driven by bench-serve's load generator with its client photos, one per request. The
floor app (`floor_app` below) parses the same multipart upload with the product's request class
and answers JSON of the product's shape, without decoding or classifying. For each it prints
photos/s and the CPU per photo of the workers (from /proc) and of this client process: the floor's
worker CPU is the part of a served photo that no batching or faster model can remove, to set
against decode + forward in-process (`python -m scripts.bench_photo_cost`) and the ceiling that
bench-serve measures.
"""

import argparse
import tempfile
import time
from pathlib import Path

from flask import Flask, jsonify, request

from ml import CIFAR10_CLASSES
from scripts.bench_serve import Load
from scripts.serve_tools import Server, cpu_seconds, exit_on_sigterm, make_photos, multipart, photo_file
from webapp.predict.request_photos import InMemoryRequest

# gunicorn.conf.py as it is, less the hook that loads a model into each worker
FLOOR_CONFIG = """exec(compile(open("gunicorn.conf.py").read(), "gunicorn.conf.py", "exec"))
del post_worker_init  # the floor app has no model
"""
ANSWER_TOP = [{"label": label, "probability": 0.1} for label in CIFAR10_CLASSES[:5]]

floor_app = Flask(__name__)
floor_app.request_class = InMemoryRequest


@floor_app.post("/api/v1/predict")
def floor_predict():
    """The product's route without the model: every uploaded file read, one answer per file."""
    files = [(part.filename, part.read()) for part in request.files.getlist("image")]
    return jsonify(model={"name": "floor", "version": 0},
                   predictions=[{"filename": name, "label": "cat", "probability": 0.1, "bytes": len(data),
                                 "top": ANSWER_TOP, "recognised": True, "novelty": -5.0}
                                for name, data in files])


def measured(server, bodies, concurrency, total) -> dict:
    """A warm-up pass over the photos, then `total` requests, with the CPU that each side used."""
    Load(server.base, bodies, concurrency, len(bodies) * 2, 300).run()
    workers = server.workers()
    server_start = {pid: cpu_seconds(pid) for pid in workers}
    client_start = time.process_time()
    result = Load(server.base, bodies, concurrency, total, 600).run()
    server_cpu = sum(cpu_seconds(pid) - used for pid, used in server_start.items())
    client_cpu = time.process_time() - client_start
    photos = result["requests"] - result["errors"]
    return dict(result, worker_ms=server_cpu / photos * 1000, client_ms=client_cpu / photos * 1000,
                cores=(server_cpu + client_cpu) / result["seconds"], workers=len(workers))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=16, help="keep-alive clients")
    parser.add_argument("--cycles", type=int, default=40,
                        help="requests per server: this many passes over the photos")
    parser.add_argument("--rounds", type=int, default=4, help="photos: this many of each client kind")
    args = parser.parse_args()
    exit_on_sigterm()
    photos = make_photos(args.rounds, kinds="client")
    bodies = [(*multipart([photo_file(path, fmt)]), 1) for path, fmt in photos]
    total = len(bodies) * args.cycles
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-http-floor-") as tmp:
        work = Path(tmp)
        config = work / "floor.conf.py"
        config.write_text(FLOOR_CONFIG)
        for label, options in (("floor app (no model)", dict(app="scripts.bench_http_floor:floor_app",
                                                              config=config)),
                               ("the product (wsgi:app)", {})):
            server = Server(work / f"instance-{len(rows)}", **options)
            try:
                server.first_prediction(photo_file(*photos[0]))
                rows.append((label, measured(server, bodies, args.concurrency, total)))
            finally:
                server.stop()
    print(f"{len(photos)} client photos, one per request, concurrency {args.concurrency}, "
          f"{total} requests per server")
    print("| server | workers | errors | photos/s | worker CPU ms/photo | client CPU ms/photo | cores busy |")
    print("|---|---|---|---|---|---|---|")
    for label, r in rows:
        print(f"| {label} | {r['workers']} | {r['errors']} | {r['images_per_s']:.1f} | {r['worker_ms']:.2f} | "
              f"{r['client_ms']:.2f} | {r['cores']:.2f} |")


if __name__ == "__main__":
    main()
