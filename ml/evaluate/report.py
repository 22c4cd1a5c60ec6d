"""Evaluation reports: accuracy, per-class accuracy, confusion matrix, loss, calibration; the
robustness suite (client variants, common corruptions); the novelty score's open-set and far-out
separation.

    python -m ml.evaluate --model models/default --data data [--tta 1] [--out report.json]
    python -m ml.evaluate --model models/default --data data --robustness --novelty \
        [--package-photos data/package-photos]
    python -m ml.evaluate --model models/default --data data --serving-policy --write-card
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from ml.data import outliers, robustness
from ml.evaluate import serving_policy
from ml.data.sources import Split, iterate_batches, load_dataset, normalize
from ml.nets.device import autocast, pick_amp_dtype, pick_device
from ml.data.files import write_json_atomic
from ml.nets.modelfile import CARD_FILE, load_model_dir, load_novelty_bank
from ml.nets.models import tta_outputs
from ml.nets.novelty import METHODS, auroc, energy_temperature, novelty_scores

CALIBRATION_BINS = 15


SUITE_VARIANT_IMAGES = 500     # validation images behind the 13 client variants (6,500 inputs)
SUITE_CORRUPTION_IMAGES = 200  # validation images behind 12 corruptions x 5 severities (12,000)
FAR_OUT_IMAGES = 300           # per procedural far-out set


@torch.no_grad()
def predict_outputs(model, split: Split, device, batch_size=500, tta=0, amp_dtype=None, norm=None):
    """(logits, penultimate features), float32 on CPU, for every image of `split`, in order."""
    model.eval()
    logits, features = [], []
    for images, _ in iterate_batches(split, batch_size):
        x = normalize(images.to(device), *(norm or ()))
        with autocast(device, amp_dtype):
            batch_logits, batch_features = tta_outputs(model, x, tta)
        logits.append(batch_logits.float().cpu())
        features.append(batch_features.float().cpu())
    return torch.cat(logits), torch.cat(features)


def predict_logits(model, split: Split, device, batch_size=500, tta=0, amp_dtype=None, norm=None):
    """Logits (float32, on CPU) for every image of `split`, in order."""
    return predict_outputs(model, split, device, batch_size, tta, amp_dtype, norm)[0]


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


class ModelRunner:
    """A loaded model with its card's preprocessing, TTA and temperature: images in, calibrated
    logits and features out. The robustness and novelty reports all go through it."""

    def __init__(self, model, card, device, amp_dtype=None, novelty_bank=None):
        self.model, self.card, self.device, self.amp_dtype = model, card, device, amp_dtype
        self.tta = card.get("tta", 0)
        self.temperature = card.get("temperature", 1.0)
        self.norm = (card["normalization"]["mean"], card["normalization"]["std"])
        self.novelty_bank = novelty_bank

    def outputs(self, images: torch.Tensor):
        """(calibrated logits, features) for uint8 (N, 3, 32, 32) images."""
        split = Split(images, torch.zeros(len(images), dtype=torch.int64))
        logits, features = predict_outputs(self.model, split, self.device, tta=self.tta,
                                           amp_dtype=self.amp_dtype, norm=self.norm)
        return logits / self.temperature, features

    def recognised_share(self, logits, features):
        """The share the card's novelty threshold recognises (None for a card without one)."""
        spec = self.card.get("novelty")
        if not spec:
            return None
        scores = novelty_scores(spec["method"], logits, features, self.novelty_bank, energy_temperature(spec))
        return (scores <= spec["threshold"]).float().mean().item()

    def novelty(self, images: torch.Tensor, methods=METHODS) -> dict:
        """{method: novelty scores} for the images (knn only with a training-feature bank; energy
        at the card's temperature)."""
        logits, features = self.outputs(images)
        temperature = energy_temperature(self.card.get("novelty") or {})
        return {m: novelty_scores(m, logits, features, self.novelty_bank, temperature) for m in methods
                if m != "knn" or self.novelty_bank is not None}


def _shift_report(logits, labels, reference=None) -> dict:
    confidence, predicted = logits.softmax(1).max(1)
    correct = predicted == labels
    report = {"inputs": len(labels), "accuracy": correct.float().mean().item(),
              "ece": calibration(confidence, correct)[0],
              "mean_confidence": confidence.mean().item()}
    if reference is not None:
        report["agreement"] = (predicted == reference).float().mean().item()
    return report


def robustness_report(runner: ModelRunner, val: Split, cache_dir, variant_images=SUITE_VARIANT_IMAGES,
                      corruption_images=SUITE_CORRUPTION_IMAGES) -> dict:
    """The robustness suite on fixed class-balanced subsets of the validation split: agreement
    with the original image and accuracy on client variants, accuracy on corruptions, and ECE."""
    pick = robustness.suite_subset(val.labels, variant_images)
    images, labels = val.images[pick], val.labels[pick]
    variants = robustness.cached_client_variants(images, cache_dir)
    original = runner.outputs(images)[0].argmax(1)
    logits, features = runner.outputs(variants.flatten(0, 1))
    everything = dict(_shift_report(logits, labels.repeat(len(variants)), original.repeat(len(variants))),
                      recognised=runner.recognised_share(logits, features))
    logits = logits.view(len(variants), len(images), -1)
    per_variant = {name: _shift_report(logits[i], labels, original)
                   for i, name in enumerate(robustness.VARIANT_NAMES)}
    pick = robustness.suite_subset(val.labels, corruption_images, seed=1)
    images, labels = val.images[pick], val.labels[pick]
    outputs = {(name, s): runner.outputs(robustness.corrupt(images, name, s))
               for name in robustness.CORRUPTIONS for s in range(1, robustness.SEVERITIES + 1)}
    corrupted = {key: logits for key, (logits, _) in outputs.items()}
    all_corrupted = torch.cat(list(corrupted.values()))
    recognised = runner.recognised_share(all_corrupted, torch.cat([f for _, f in outputs.values()]))
    return {
        "precision": str(runner.amp_dtype or "torch.float32"), "tta": runner.tta,
        "variants": dict(everything, images=len(original), per_variant=per_variant),
        "corruptions": dict(_shift_report(all_corrupted, labels.repeat(len(corrupted))), images=len(labels),
                            recognised=recognised,
                            per_corruption={name: [(corrupted[name, s].argmax(1) == labels).float().mean().item()
                                                   for s in range(1, robustness.SEVERITIES + 1)]
                                            for name in robustness.CORRUPTIONS}),
    }


def suite_splits(val: Split, cache_dir, variant_images=SUITE_VARIANT_IMAGES,
                 corruption_images=SUITE_CORRUPTION_IMAGES) -> list:
    """[(name, Split)] of the robustness suite's inputs, every variant and corruption in one
    set each, with their true labels (what the serving policy must hold on)."""
    pick = robustness.suite_subset(val.labels, variant_images)
    variants = robustness.cached_client_variants(val.images[pick], cache_dir)
    corrupt_pick = robustness.suite_subset(val.labels, corruption_images, seed=1)
    corrupted = [robustness.corrupt(val.images[corrupt_pick], name, s)
                 for name in robustness.CORRUPTIONS for s in range(1, robustness.SEVERITIES + 1)]
    return [("variants", Split(variants.flatten(0, 1), val.labels[pick].repeat(len(variants)))),
            ("corruptions", Split(torch.cat(corrupted), val.labels[corrupt_pick].repeat(len(corrupted))))]


def serving_section(model, card, device, val: Split, cache_dir, speed: bool = True) -> dict:
    """The serving policy (precision gate, TTA policy, and with `speed` forward-pass speeds)
    measured on this device; the TTA policy must also hold on the robustness suite when the card
    has its figures."""
    suite = suite_splits(val, cache_dir) if card.get("robustness") else ()
    return serving_policy.measure(model, card, device, val, suite, speed)


def far_out_sets(package_photos=None, count=FAR_OUT_IMAGES) -> dict:
    """{set name: uint8 images} of things that are none of the ten classes."""
    sets = {name: outliers.procedural_set(name, count) for name in outliers.PROCEDURAL_SETS}
    if package_photos:
        for group in ("photos", "digits"):
            folder = Path(package_photos) / group
            if folder.is_dir():
                sets[f"package {group}"] = outliers.photo_crops(folder, 12 if group == "photos" else 0)
    return sets


def novelty_report(runner: ModelRunner, known: Split, unknown_sets: dict, threshold=None,
                   method=None) -> dict:
    """AUROC of every novelty method at telling each set of `unknown_sets` from the `known`
    images; with a threshold, the share of each set refused by the card's method."""
    known_scores = runner.novelty(known.images)
    report = {"known_images": len(known), "sets": {}}
    for name, images in unknown_sets.items():
        scores = runner.novelty(images)
        entry = {"images": len(images), "auroc": {m: auroc(known_scores[m], scores[m]) for m in scores}}
        if threshold is not None:
            entry["refused"] = (scores[method] > threshold).float().mean().item()
        report["sets"][name] = entry
    if threshold is not None:
        report["known_recognised"] = (known_scores[method] <= threshold).float().mean().item()
    return report


def load_model_split(data_root, card, val_size=None):
    """The dataset a model card describes, split as in its training run (same held-out images),
    so a report or a calibration never looks at images the model was trained on."""
    split_info = card.get("data", {})
    dataset = load_dataset(data_root, val_size=val_size or split_info.get("val_size", 5000),
                           split_seed=split_info.get("split_seed", 0))
    if dataset.classes != card["classes"]:
        if not set(card["classes"]) < set(dataset.classes):
            sys.exit(f"the dataset's classes {dataset.classes} differ from the model's {card['classes']}")
        dataset = dataset.only_classes(card["classes"])  # an open-set model: the rest are unknowns
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
    parser.add_argument("--robustness", action="store_true",
                        help="add the robustness suite (client variants, corruptions) to the report")
    parser.add_argument("--novelty", action="store_true",
                        help="add the novelty methods' AUROC on far-out sets (and on the classes an "
                             "open-set model left out) to the report")
    parser.add_argument("--package-photos", default=None,
                        help="folder made by scripts/export_package_photos.py, for the far-out sets")
    parser.add_argument("--suite-precision", default="auto", choices=["auto", "fp32", "bf16"],
                        help="autocast for the suite and novelty passes (auto: bf16 where supported, "
                             "about 1.8x faster with TTA; the clean report is always fp32 as served)")
    parser.add_argument("--serving-policy", action="store_true",
                        help="measure the precision gate and TTA policy the server uses on this device "
                             "(on the robustness suite too when the card has its figures; minutes)")
    parser.add_argument("--write-card", action="store_true",
                        help="with --serving-policy: write the measured policy into the model's card")
    parser.add_argument("--out", default=None, help="also write the report to this file")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    model, card = load_model_dir(args.model, device)
    dataset = load_model_split(args.data, card, args.val_size)
    if args.tta is not None:
        card = dict(card, tta=args.tta)
    runner = ModelRunner(model, card, device, novelty_bank=load_novelty_bank(args.model, card))
    report = report_from_logits(runner.outputs(dataset.val.images)[0], dataset.val.labels, dataset.classes,
                                dataset.val_name, runner.tta)
    runner.amp_dtype = pick_amp_dtype(args.suite_precision, device)
    if args.robustness:
        report["robustness"] = robustness_report(runner, dataset.val, Path(args.data) / ".cache")
    if args.novelty:
        spec = card.get("novelty", {})
        unknowns = far_out_sets(args.package_photos)
        if dataset.unknown_val is not None:
            unknowns = {"held-out classes": dataset.unknown_val.images, **unknowns}
        report["novelty"] = novelty_report(runner, dataset.val, unknowns, spec.get("threshold"),
                                           spec.get("method"))
    if args.serving_policy:
        report["serving"] = serving_section(model, card, device, dataset.val, Path(args.data) / ".cache")
        if args.write_card:
            card_path = Path(args.model) / CARD_FILE
            write_json_atomic(card_path, serving_policy.merged(json.loads(card_path.read_text()), report["serving"]))
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(text)


if __name__ == "__main__":
    main()
