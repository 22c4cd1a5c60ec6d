"""Export a model folder for use outside this project, as ONNX or TorchScript, with an export card.

    python -m ml.export --model models/default --format onnx [--out FILE] [--tta LEVEL]
    python -m ml.export --model models/default --format onnx --check --data data

What the file computes: ml/export/graph.py; the files: ml/export/formats.py.

`--check` runs the exported file (onnxruntime's CPU provider, or TorchScript) and the PyTorch
Predictor over the validation split the model was trained beside, and fails unless top-1 agrees on
at least PARITY_MIN of the images; the figure goes into the card next to the file.
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime
import torch

from ml.export.formats import FORMATS, card_path, export_model, exported_runner, write_card
from ml.predict.predictor import Predictor

PARITY_MIN = 0.999  # share of validation images whose top-1 must match PyTorch's
CHECK_BATCH = 250


def check_parity(path, fmt: str, model_dir, data_root, val_size=None) -> dict:
    """Top-1 agreement between the exported file and the PyTorch Predictor, at the export's TTA
    level, over the model's validation split."""
    card = json.loads(card_path(path).read_text())
    predictor = Predictor(model_dir, "cpu")
    # the reference is the export's own computation: fp32, every view of its TTA level (the
    # server's bf16 and adaptive policy are gated against exactly that; see ml/evaluate/serving_policy.py)
    predictor.tta, predictor.confident_at, predictor.amp_dtype = card["tta"]["level"], None, None
    split = predictor.card_model.dataset(data_root, val_size).val
    images = split.images.permute(0, 2, 3, 1).contiguous().numpy()
    run = exported_runner(path, fmt)
    agree, max_diff = 0, 0.0
    for start in range(0, len(images), CHECK_BATCH):
        batch = images[start:start + CHECK_BATCH]
        exported = run(batch)
        reference = predictor.probabilities(list(batch))[0].numpy()
        agree += int((exported.argmax(1) == reference.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(exported - reference).max()))
    return {"images": len(images), "top1_agreement": agree / len(images), "max_probability_difference": max_diff,
            "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider" if fmt == "onnx"
            else f"torch {torch.__version__} TorchScript", "reference": "ml.predict.Predictor, fp32, CPU"}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ml.export", description="Export a model folder as ONNX or "
                                     "TorchScript, with a card stating its exact preprocessing.")
    parser.add_argument("--model", default="models/default", help="model folder (weights + card.json)")
    parser.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="export format")
    parser.add_argument("--out", default=None, help="output file (default: NAME-VERSION.onnx or .pt here); "
                        "its card goes to OUT.json")
    parser.add_argument("--tta", type=int, default=None, choices=[0, 1, 2],
                        help="test-time augmentation baked into the graph (default: the card's, as the website)")
    parser.add_argument("--check", action="store_true",
                        help="then measure top-1 parity with PyTorch on the validation split (needs --data)")
    parser.add_argument("--data", default="data", help="dataset root for --check")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation images for --check (default: the card's, so the split matches training)")
    args = parser.parse_args(argv)
    out = export_model(args.model, args.format, args.out, args.tta)
    print(f"wrote {out} and {card_path(out)}")
    if args.check:
        parity = check_parity(out, args.format, args.model, args.data, args.val_size)
        card = json.loads(card_path(out).read_text())
        write_card(out, dict(card, parity=parity))
        print(json.dumps(parity, indent=1))
        if parity["top1_agreement"] < PARITY_MIN:
            sys.exit(f"{out}: top-1 agrees with PyTorch on {parity['top1_agreement']:.2%} of the images, "
                     f"under {PARITY_MIN:.1%}")


if __name__ == "__main__":
    main()
