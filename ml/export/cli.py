"""Export a model folder for use outside this project, as ONNX or TorchScript, with an export card.

    python -m ml.export --model models/default --format onnx [--out FILE] [--tta LEVEL]
    python -m ml.export --model models/default --format onnx --check --data data

What the file computes: ml/export/graph.py; the files: ml/export/formats.py.

`--check` runs the exported file (onnxruntime's CPU provider, or TorchScript) and the PyTorch
Predictor over the validation split the model was trained beside, and fails unless top-1 agrees on
at least PARITY_MIN of the images (label, and label with candidates and the novelty verdict); the
figures go into the card next to the file.
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime
import torch

from ml.export.formats import FORMATS, card_path, export_model, exported_runner, write_card
from ml.predict.predictor import Predictor

PARITY_MIN = 0.999  # share of validation images whose label, and whole answer, must match PyTorch's
CHECK_BATCH = 250


def check_parity(path, fmt: str, model_dir, data_root, val_size=None) -> dict:
    """How often the exported file answers as the website does, over the model's validation split:
    the same label, and the same whole answer (label, candidates, recognised); and the largest
    probability difference. The reference is the Predictor with the export's TTA policy (the
    website's, unless --tta chose a level) in fp32: the server's bf16 is gated against fp32
    separately (ml/evaluate/serving_policy.py)."""
    card = json.loads(card_path(path).read_text())
    predictor = Predictor(model_dir, "cpu")
    predictor.tta, predictor.amp_dtype = card["tta"]["level"], None
    predictor.confident_at = (card["tta"].get("adaptive") or {}).get("confident_at")
    split = predictor.card_model.dataset(data_root, val_size).val
    images = split.images.permute(0, 2, 3, 1).contiguous().numpy()
    run = exported_runner(path, fmt)
    same_label, same_answer, max_diff = 0, 0, 0.0
    for start in range(0, len(images), CHECK_BATCH):
        batch = images[start:start + CHECK_BATCH]
        probabilities, novelty = run(batch)
        reference, reference_novelty = predictor.probabilities(list(batch))
        max_diff = max(max_diff, float(np.abs(probabilities - reference.numpy()).max()))
        for p, n, ref_p, ref_n in zip(probabilities, novelty.tolist(), reference, reference_novelty.tolist()):
            exported, served = answer_of(predictor, torch.from_numpy(p), n), answer_of(predictor, ref_p, ref_n)
            same_label += exported["label"] == served["label"]
            same_answer += exported == served
    return {"images": len(images), "top1_agreement": same_label / len(images),
            "answer_agreement": same_answer / len(images), "max_probability_difference": max_diff,
            "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider" if fmt == "onnx"
            else f"torch {torch.__version__} TorchScript",
            "reference": f"ml.predict.Predictor, fp32, CPU, TTA level {predictor.tta}"
                         + (f", extra views below {predictor.confident_at:g} confidence" if predictor.confident_at
                            else "")}


def answer_of(predictor, probabilities, novelty) -> dict:
    """What the website says for these outputs: label, candidates, recognised and answer."""
    described = predictor.describe(probabilities, novelty)
    return {key: described[key] for key in ("label", "candidates", "recognised", "answer")}


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
        if min(parity["top1_agreement"], parity["answer_agreement"]) < PARITY_MIN:
            sys.exit(f"{out}: the label agrees with PyTorch on {parity['top1_agreement']:.2%} of the images and the "
                     f"whole answer on {parity['answer_agreement']:.2%}: under {PARITY_MIN:.1%}")


if __name__ == "__main__":
    main()
