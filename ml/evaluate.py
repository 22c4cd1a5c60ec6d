"""Evaluation report: accuracy, per-class accuracy, confusion matrix, loss, calibration.

    python -m ml.evaluate --model models/default --data data [--tta 1] [--out report.json]
"""

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from ml.data import Split, iterate_batches, load_dataset, normalize
from ml.device import autocast, pick_device
from ml.modelfile import load_model_dir
from ml.models import tta_logits

CALIBRATION_BINS = 15


@torch.no_grad()
def predict_logits(model, split: Split, device, batch_size=500, tta=0, amp_dtype=None, norm=None):
    """Logits (float32, on CPU) for every image of `split`, in order."""
    model.eval()
    out = []
    for images, _ in iterate_batches(split, batch_size):
        x = normalize(images.to(device), *(norm or ()))
        with autocast(device, amp_dtype):
            out.append(tta_logits(model, x, tta).float().cpu())
    return torch.cat(out)


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins=CALIBRATION_BINS):
    """Expected calibration error and the reliability-diagram bins (equal-width on confidence)."""
    edges = torch.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        in_bin = (confidence > lo) & (confidence <= hi)
        count = int(in_bin.sum())
        if count:
            acc = correct[in_bin].float().mean().item()
            conf = confidence[in_bin].mean().item()
            ece += count / len(confidence) * abs(acc - conf)
        else:
            acc = conf = None
        table.append({"low": lo, "high": hi, "count": count, "accuracy": acc, "confidence": conf})
    return ece, table


def report_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes, split_name: str,
                       tta: int = 0, misclassified_limit: int = 48) -> dict:
    """The JSON evaluation report for given logits and true labels."""
    k = len(classes)
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    correct = predicted == labels
    confusion = torch.zeros(k, k, dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class_total = confusion.sum(1)
    per_class = {c: (confusion[i, i].item() / per_class_total[i].item() if per_class_total[i] else None)
                 for i, c in enumerate(classes)}
    ece, bins = calibration(confidence, correct)
    # The most confident mistakes first: the ones a user is most likely to be misled by.
    wrong = (~correct).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:misclassified_limit]
    return {
        "split": split_name,
        "images": len(labels),
        "tta": tta,
        "accuracy": correct.float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "per_class_accuracy": per_class,
        "classes": list(classes),
        "confusion_matrix": confusion.tolist(),
        "ece": ece,
        "calibration_bins": bins,
        "misclassified": [{"index": int(i), "true": classes[labels[i]], "predicted": classes[predicted[i]],
                           "confidence": confidence[i].item()} for i in wrong],
    }


def evaluate_model(model, split: Split, classes, split_name, device="cpu", tta=0, amp_dtype=None,
                   norm=None, temperature=1.0) -> dict:
    device = torch.device(device)
    logits = predict_logits(model, split, device, tta=tta, amp_dtype=amp_dtype, norm=norm)
    return report_from_logits(logits / temperature, split.labels, classes, split_name, tta)


def load_model_split(data_root, card, val_size=None):
    """The dataset a model card describes, split as in its training run (same held-out images),
    so a report or a calibration never looks at images the model was trained on."""
    split_info = card.get("data", {})
    dataset = load_dataset(data_root, val_size=val_size or split_info.get("val_size", 5000),
                           split_seed=split_info.get("split_seed", 0))
    if dataset.classes != card["classes"]:
        sys.exit(f"the dataset's classes {dataset.classes} differ from the model's {card['classes']}")
    return dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description="Evaluate a model folder on a dataset's "
                                     "validation (or test) split; prints a JSON report.")
    parser.add_argument("--model", required=True, help="model folder (weights + card.json)")
    parser.add_argument("--data", required=True, help="dataset root (CIFAR python layout or image folders)")
    parser.add_argument("--tta", type=int, default=None, choices=[0, 1, 2],
                        help="test-time augmentation level (default: the card's)")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation images held out (default: the card's, so the split matches training)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, card = load_model_dir(args.model, device)
    dataset = load_model_split(args.data, card, args.val_size)
    tta = card.get("tta", 0) if args.tta is None else args.tta
    norm = (card["normalization"]["mean"], card["normalization"]["std"])
    report = evaluate_model(model, dataset.val, dataset.classes, dataset.val_name, device, tta, norm=norm,
                            temperature=card.get("temperature", 1.0))
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
