"""Inference engines for the served model: onnxruntime (CPU provider) against PyTorch fp32, bf16
autocast and dynamic int8 (and with --compile torch.compile), at batch 1 and 16, with the card's
TTA and without.

    python -m scripts.bench_export [--model models/default] [--threads 1] [--seconds 3] [--compile]

Every engine runs the same computation, ml.export's graph from the decoded uint8 photo to
probabilities and novelty (what the server's Predictor does after decoding); the ONNX rows run the
file `ml.export` writes. Decoding is not timed. All rows come from one run, interleaved by
call, so they compare with each other even on a shared, noisy machine; the table prints images/s
at the median call and at the fastest one (the least disturbed by other work).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ml.nets.device import autocast, pick_amp_dtype
from ml.export.formats import export_model, onnx_session
from ml.export.graph import build_exported

BATCHES = (1, 16)


def measure(runs: dict, seconds: float) -> dict:
    """Seconds per call of each `runs` function, after warm-up calls, the engines taking turns call
    by call (so a burst of other work on the machine slows them all alike), for at least `seconds`
    per engine."""
    for run in runs.values():
        for _ in range(3):
            run()
    times, start = {name: [] for name in runs}, time.perf_counter()
    while time.perf_counter() - start < seconds * len(runs) or min(map(len, times.values())) < 5:
        for name, run in runs.items():
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    return times


def torch_runner(module, images, amp_dtype):
    batch = torch.from_numpy(images)
    device = torch.device("cpu")

    def run():
        with torch.inference_mode(), autocast(device, amp_dtype):
            module(batch)
    return run


def onnx_runner(path, images, threads):
    session = onnx_session(path, threads)
    return lambda: session.run(None, {"image": images})


def rows_for(model_dir, tta, threads, seconds, folder, compile_rows=False):
    module = build_exported(model_dir, tta)[0]
    onnx_file = export_model(model_dir, "onnx", Path(folder) / f"tta{tta}.onnx", tta)
    bf16 = pick_amp_dtype("bf16", torch.device("cpu"))
    int8 = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    compiled = torch.compile(module) if compile_rows else None
    for batch in BATCHES:
        images = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        engines = {"onnxruntime CPU fp32": onnx_runner(onnx_file, images, threads),
                   "PyTorch fp32": torch_runner(module, images, None),
                   "PyTorch bf16 autocast": torch_runner(module, images, bf16),
                   # int8: dynamic quantisation covers the Linear head only (convolutions stay fp32)
                   "PyTorch int8 dynamic": torch_runner(int8, images, None)}
        if compiled is not None:
            engines["torch.compile fp32"] = torch_runner(compiled, images, None)
        for engine, times in measure(engines, seconds).items():
            yield tta, batch, engine, batch / statistics.median(times), batch / min(times)


def main(argv=None):
    parser = argparse.ArgumentParser(description="onnxruntime vs PyTorch fp32 / bf16 inference speed on CPU.")
    parser.add_argument("--model", default="models/default", help="model folder")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every engine")
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per row, at least")
    parser.add_argument("--tta", type=int, nargs="+", default=[2, 0], help="TTA levels to measure")
    parser.add_argument("--compile", action="store_true",
                        help="also torch.compile (inductor; compiling takes minutes on this CPU)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"{args.model}, {args.threads} thread(s), torch {torch.__version__}, "
          f"bf16 supported: {torch.ops.mkldnn._is_mkldnn_bf16_supported()}")
    print(f"{'TTA':>3} {'batch':>5}  {'engine':<22} {'images/s':>9} {'best':>9}")
    with tempfile.TemporaryDirectory() as folder:
        for level in args.tta:
            for tta, batch, engine, rate, best in rows_for(args.model, level, args.threads, args.seconds, folder,
                                                                 args.compile):
                print(f"{tta:>3} {batch:>5}  {engine:<22} {rate:>9.1f} {best:>9.1f}", flush=True)


if __name__ == "__main__":
    main()
