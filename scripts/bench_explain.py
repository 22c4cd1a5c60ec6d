"""Explanation latency: POST /api/v1/explain end to end, and the saliency map alone per number of
integration steps, on the shipped model with one torch thread (what a served worker has).

    make bench-explain                    # or: python -m scripts.bench_explain [--photos 20]

End to end is the Flask app in this process answering multipart requests (decode, the TTA
prediction, integrated gradients, the PNG overlay, JSON), warmed up first. The steps table also
gives integrated gradients' completeness error (|sum of attributions - (score - baseline score)|
over the score difference, mean over the photos): how far the steps are from the exact integral,
and the time the map would take through the card's test-time augmentation instead of the plain view.
Last, what importing Captum adds to every worker's start (it imports matplotlib), in a fresh process.
"""

import argparse
import io
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from captum.attr import IntegratedGradients

from ml import CIFAR10_CLASSES
from ml.predict.explain import saliency_map
from ml.nets.models import tta_logits
from ml.predict.predictor import Predictor
from webapp import create_app
from webapp.settings import SETTINGS

DATA = Path("data/train")


def photos(count: int) -> list:
    """JPEG bytes of real CIFAR-10 training photos, the classes in turn."""
    n = len(CIFAR10_CLASSES)
    files = [sorted((DATA / CIFAR10_CLASSES[i % n]).glob("*.jpg"))[i // n] for i in range(count)]
    return [path.read_bytes() for path in files]


def percentile(values, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def end_to_end(model_dir: str, images: list, rounds: int) -> list:
    with tempfile.TemporaryDirectory() as instance:
        client = create_app({"INSTANCE_PATH": instance, "MODEL_DIR": model_dir}).test_client()

        def ask(data):
            response = client.post("/api/v1/explain", data={"image": (io.BytesIO(data), "photo.jpg")},
                                   content_type="multipart/form-data")
            assert response.status_code == 200, response.get_data(as_text=True)
        ask(images[0])  # loads the model
        return [timed(ask, data) for _ in range(rounds) for data in images]


def completeness_error(predictor, array, label, steps) -> float:
    x = predictor.inputs([array])
    target = predictor.classes.index(label)
    with torch.enable_grad():
        _, delta = IntegratedGradients(predictor.model).attribute(
            x, target=target, n_steps=steps, internal_batch_size=steps, return_convergence_delta=True)
    with torch.no_grad():
        scores = predictor.model(torch.cat([x, torch.zeros_like(x)]))[:, target]
    return float(delta.abs()) / max(float((scores[0] - scores[1]).abs()), 1e-6)


def steps_row(predictor, arrays, labels, steps) -> tuple:
    saliency_map(predictor, arrays[0], labels[0], steps)  # warm-up
    seconds = [timed(saliency_map, predictor, a, label, steps) for a, label in zip(arrays, labels)]
    errors = [completeness_error(predictor, a, label, steps) for a, label in zip(arrays, labels)]
    return statistics.median(seconds), percentile(seconds, 0.95), statistics.mean(errors)


def tta_seconds(predictor, arrays, labels, steps) -> float:
    """Median time of the map through the card's TTA (what ml.predict.explain does not do), a few photos."""
    integrated = IntegratedGradients(lambda x: tta_logits(predictor.model, x, predictor.tta))

    def attribute(array, label):
        with torch.enable_grad():
            integrated.attribute(predictor.inputs([array]), target=predictor.classes.index(label), n_steps=steps,
                                 internal_batch_size=steps)
    return statistics.median(timed(attribute, a, label) for a, label in zip(arrays[:5], labels[:5]))


IMPORT_COST = """
import time, torch
def rss_mb(): return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
before, start = rss_mb(), time.perf_counter()
from captum.attr import IntegratedGradients
print(f"{time.perf_counter() - start:.2f} s, +{rss_mb() - before:.0f} MB")
"""


def captum_import_cost() -> str:
    out = subprocess.run([sys.executable, "-c", IMPORT_COST], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description="Time /api/v1/explain on this machine.")
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--photos", type=int, default=20, help="real photos from data/train, the classes in turn")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the photos end to end")
    parser.add_argument("--steps", default="8,16,32", help="integration steps to compare, comma-separated")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    images = photos(args.photos)
    default_steps = dict((name, default) for name, default, _ in SETTINGS)["EXPLAIN_STEPS"]

    latencies = end_to_end(args.model, images, args.rounds)
    print(f"POST /api/v1/explain, {len(latencies)} requests, EXPLAIN_STEPS={default_steps}, 1 torch thread: "
          f"p50 {statistics.median(latencies) * 1000:.0f} ms, p95 {percentile(latencies, 0.95) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")

    predictor = Predictor(args.model, "cpu")
    arrays = [predictor.decode(data) for data in images]
    labels = [result["label"] for result in predictor.predict_arrays(arrays)]
    print("\n| steps | saliency map p50 ms | p95 ms | completeness error |\n|---|---|---|---|")
    for steps in map(int, args.steps.split(",")):
        median, p95, error = steps_row(predictor, arrays, labels, steps)
        print(f"| {steps} | {median * 1000:.0f} | {p95 * 1000:.0f} | {error:.3f} |")
    print(f"\nthrough TTA level {predictor.tta} at {default_steps} steps instead: "
          f"p50 {tta_seconds(predictor, arrays, labels, default_steps) * 1000:.0f} ms")
    print(f"importing captum.attr after torch, per worker: {captum_import_cost()}")


if __name__ == "__main__":
    main()
