"""Training benchmark: images/s per model and precision, then time-to-accuracy of `fast`.

    make bench-train                      # or: python -m scripts.bench_train [--skip-full]

Throughput is measured on real training batches (augmentation included) in this one run, so the
rows compare with each other even on a shared, noisy machine; the tutorial's set-up (seednet,
batch 5, fp32) is the baseline row. Each step is ml.train's own `train_step` with the row's preset
(its translation and label smoothing), at the preset's base learning rate. The allocator column
compares glibc's default, which unmaps and page-faults large buffers every step, with
ml.train.libc.keep_freed_memory() as ml.train uses it.
"""

import argparse
import time
from pathlib import Path

import torch

from ml.data.sources import load_dataset
from ml.nets.device import pick_amp_dtype
from ml.train.libc import keep_freed_memory
from ml.nets.models import arch_kwargs, build_model
from ml.nets.optim import make_optimizer
from ml.train.presets import NO_ROBUSTNESS_TRAINING, PRESETS
from ml.train.checkpoint import TrainState
from ml.train.cli import build_parser, resolve_config
from ml.train.loop import RunSettings, train, train_step

FAST, BEST, SGD = PRESETS["fast"], PRESETS["best"], PRESETS["sgd"]
# (row label, preset whose model and optimizer the row trains, batch size, precision, allocator,
# settings that override the preset's). Rows with glibc's default allocator run first:
# keep_freed_memory() cannot be undone in a process. `best` trains on photos as sent (blur, noise,
# colour and 10% synthetic outliers in every step; the serving-path swap is made once per epoch,
# outside the step); the row before it is the same recipe without them.
CONFIGS = [
    ("seednet (tutorial, batch 5)", "seed", 5, "fp32", "default"),
    ("airnet fast", "fast", FAST["batch_size"], "bf16", "default"),
    ("seednet", "seed", 512, "fp32", "kept"),
    ("seednet", "seed", 512, "bf16", "kept"),
    ("airnet fast", "fast", FAST["batch_size"], "fp32", "kept"),
    ("airnet fast", "fast", FAST["batch_size"], "bf16", "kept"),
    ("airnet best, without photo augmentation and outliers", "best", BEST["batch_size"], "bf16", "kept",
     NO_ROBUSTNESS_TRAINING),
    ("airnet best", "best", BEST["batch_size"], "bf16", "kept"),
    ("airnet sgd", "sgd", SGD["batch_size"], "bf16", "kept"),
]


def throughput(images, preset, batch_size, precision, seconds, overrides=None):
    """Training images/s: ml.train's train_step (augmentation, forward, backward and the preset's
    optimizer step) on real batches."""
    device = torch.device("cpu")
    torch.manual_seed(0)
    config = dict(PRESETS[preset], **(overrides or {}))
    model = build_model(config["arch"], **arch_kwargs(config)).to(memory_format=torch.channels_last).train()
    optimizer = make_optimizer(model, config)
    amp = pick_amp_dtype(precision, device)
    if precision == "bf16" and amp is None:
        return None  # this CPU has no bf16 support
    scaler = torch.amp.GradScaler(device.type, enabled=False)  # as ml.train on CPU: no fp16
    state = TrainState(model, optimizer, scaler, None)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (batch_size,))

    def step(i):
        start = (i * batch_size) % (len(images) - batch_size)
        train_step(model, state, (images[start:start + batch_size], labels), config, generator, amp)

    step(0)  # warm-up
    done, i, begin = 0, 1, time.perf_counter()
    while time.perf_counter() - begin < seconds:
        step(i)
        done += batch_size
        i += 1
    return done / (time.perf_counter() - begin)


def time_to_accuracy(data, thresholds):
    records = []
    args = build_parser().parse_args(["--preset", "fast", "--data", str(data)])
    card = train(resolve_config(args), Path("runs/bench-fast"), RunSettings(suite=False), emit=records.append)
    epochs = [r for r in records if r["type"] == "epoch"]
    reached = {t: next((r["elapsed_s"] for r in epochs if r["val_accuracy"] >= t), None) for t in thresholds}
    return card, epochs, reached


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data", help="dataset root")
    parser.add_argument("--seconds", type=float, default=20, help="seconds of training per throughput row")
    parser.add_argument("--skip-full", action="store_true", help="only the throughput table")
    args = parser.parse_args()

    dataset = load_dataset(args.data)
    images = dataset.train.images[:20000]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"bf16 autocast: {pick_amp_dtype('auto', torch.device('cpu')) is not None}\n")
    print("| model | batch | precision | allocator | train images/s | vs tutorial |")
    print("|---|---|---|---|---|---|")
    baseline = None
    for label, preset, batch, precision, allocator, *overrides in CONFIGS:
        if allocator == "kept":
            keep_freed_memory()  # as ml.train does
        rate = throughput(images, preset, batch, precision, args.seconds, *overrides)
        row = f"| {label} | {batch} | {precision} | {allocator} |"
        if rate is None:
            print(f"{row} n/a | |")
            continue
        baseline = baseline or rate
        print(f"{row} {rate:,.0f} | {rate / baseline:.1f}x |", flush=True)
    if args.skip_full:
        return
    card, epochs, reached = time_to_accuracy(args.data, [0.85, 0.90])
    print("\n| `fast` preset | value |")
    print("|---|---|")
    for threshold, seconds in reached.items():
        value = f"{seconds / 60:.1f} min" if seconds is not None else "not reached"
        print(f"| time to {threshold:.0%} validation accuracy (no TTA) | {value} |")
    print(f"| training time, {len(epochs)} epochs | {card['training']['train_seconds'] / 60:.1f} min |")
    print(f"| final validation accuracy (TTA {card['tta']}) | {card['evaluation']['accuracy']:.2%} |")


if __name__ == "__main__":
    main()
