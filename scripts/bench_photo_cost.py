"""What one served photo costs a worker's core, in-process: decoding, and the forward pass (the
card's precision and TTA policy) per image at each micro-batch size.

    python -m scripts.bench_photo_cost [--model models/default] [--seconds 3]

One torch thread, as a served worker has, on the benchmark's client photos (scripts/serve_tools).
It tells how far batching can take the server: the CPU a served photo takes beyond decode and
forward (bench-serve's cores x utilisation / photos/s minus these) is the per-request cost of HTTP,
Flask, multipart parsing, JSON, metrics and logging.
"""

import argparse
import time

import torch

from ml.predict.predictor import Predictor
from scripts.serve_tools import SHIPPED_MODEL, make_photos

BATCH_SIZES = (1, 2, 4, 8, 16)


def per_image_ms(run, items, batch, seconds) -> float:
    """Milliseconds per image of `run` over `items`, `batch` at a time, for at least `seconds`."""
    run(items[:batch])  # warm-up of this batch size
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for i in range(0, len(items) - batch + 1, batch):
            run(items[i:i + batch])
            done += batch
    return (time.perf_counter() - start) / done * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHIPPED_MODEL), help="model folder (default: the shipped model)")
    parser.add_argument("--seconds", type=float, default=3, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(1)
    predictor = Predictor(args.model)
    blobs = [path.read_bytes() for path, _ in make_photos(4, kinds="client")]
    arrays = [predictor.decode(blob) for blob in blobs]
    decode_ms = per_image_ms(lambda chunk: [predictor.decode(b) for b in chunk], blobs, 1, args.seconds)
    print(f"{len(blobs)} client photos, 1 torch thread, model {args.model}")
    print("| step | ms per photo |\n|---|---|")
    print(f"| decode (ml.data.images, as served) | {decode_ms:.2f} |")
    for batch in BATCH_SIZES:
        forward_ms = per_image_ms(predictor.predict_arrays, arrays, batch, args.seconds)
        print(f"| forward, {batch} per pass | {forward_ms:.2f} |")


if __name__ == "__main__":
    main()
