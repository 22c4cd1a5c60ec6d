"""Where should "none of these" start, now that a photo between two classes gets a prediction set?

For several shares of validation images to keep (the novelty threshold's `keep_share`), fits the
threshold on the calibration half of the validation split (the half the conformal sets were fitted
on) and measures, as the server computes the scores (ml.predict.Predictor: the card's adaptive TTA
policy and precision on this device), the share refused of: the held-out half of the validation
split, every client variant, every corruption at every severity, each far-out set and, with
--package-photos, the photos shipped in scikit-image and scikit-learn.

    python -m scripts.refusal_sweep --model models/default --data data [--package-photos data/package-photos]

Prints a Markdown table and writes every figure as JSON (--out). The open-set protocol's unknown
classes need their own 8-class models: `python -m scripts.open_set` reports them at its threshold.
"""

import argparse
import json
from pathlib import Path

import torch

from ml.data import robustness
from ml.evaluate.farout import far_out_sets
from ml.evaluate.suite import SEVERITY_RANGE, suite_inputs
from ml.nets import conformal
from ml.nets.novelty import auroc, fit_threshold
from ml.predict.predictor import Predictor

KEEP_SHARES = (0.95, 0.97, 0.98, 0.99, 0.992, 0.995)
CHUNK = 250  # images per Predictor call


def served_novelty(predictor: Predictor, images: torch.Tensor) -> torch.Tensor:
    """Novelty scores of uint8 (N, 3, H, W) images as the server computes them."""
    arrays = list(images.permute(0, 2, 3, 1).contiguous().numpy())
    return torch.cat([predictor.probabilities(arrays[i:i + CHUNK])[1] for i in range(0, len(arrays), CHUNK)])


def scored_sets(predictor: Predictor, data: str, package_photos) -> tuple:
    """(validation scores, {group: {name: scores}}) for every input the sweep measures."""
    val = predictor.card_model.dataset(data).val
    suite = suite_inputs(val, Path(data) / ".cache")
    variants = {name: served_novelty(predictor, images)
                for name, images in zip(robustness.VARIANT_NAMES, suite.variants)}
    corruptions = {f"{name} {severity}": served_novelty(predictor, suite.corrupted[name, severity])
                   for name in robustness.CORRUPTIONS for severity in SEVERITY_RANGE}
    far_out = {name: served_novelty(predictor, images) for name, images in far_out_sets(package_photos).items()}
    return served_novelty(predictor, val.images), {"variants": variants, "corruptions": corruptions,
                                                   "far_out": far_out}


def refused(scores: torch.Tensor, threshold: float) -> float:
    return (scores > threshold).float().mean().item()


def sweep(validation: torch.Tensor, groups: dict, keep_shares=KEEP_SHARES) -> list:
    """One row per keep_share: its threshold (fitted on the calibration half) and the shares refused."""
    calibration, held_out = conformal.calibration_split(len(validation))
    rows = []
    for keep in keep_shares:
        threshold = fit_threshold(validation[calibration], keep)
        row = {"keep_share": keep, "threshold": threshold, "validation_held_out": refused(validation[held_out],
                                                                                          threshold)}
        for group, sets in groups.items():
            row[group] = refused(torch.cat(list(sets.values())), threshold)
            row[f"{group}_each"] = {name: refused(scores, threshold) for name, scores in sets.items()}
        corruptions = groups["corruptions"]
        row["corruptions_by_severity"] = [
            refused(torch.cat([s for name, s in corruptions.items() if name.endswith(f" {severity}")]), threshold)
            for severity in SEVERITY_RANGE]
        rows.append(row)
    return rows


def markdown(rows: list, far_out_names: list) -> str:
    header = ["keep", "threshold", "validation (held-out half)", "variants", "corruptions",
              "corruptions by severity 1-5", *far_out_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [f"{r['keep_share']:.3g}", f"{r['threshold']:.3f}", f"{r['validation_held_out']:.1%}",
                 f"{r['variants']:.1%}", f"{r['corruptions']:.1%}",
                 " / ".join(f"{v:.0%}" for v in r["corruptions_by_severity"]),
                 *(f"{r['far_out_each'][name]:.0%}" for name in far_out_names)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.refusal_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--data", default="data")
    parser.add_argument("--package-photos", default=None, help="folder made by `make package-photos`")
    parser.add_argument("--out", default="runs/refusal-sweep.json", help="every figure, as JSON")
    parser.add_argument("--keep", type=float, action="append", default=None, metavar="SHARE",
                        help=f"a share of validation to keep recognised (repeatable; default {KEEP_SHARES})")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model, "cpu")
    validation, groups = scored_sets(predictor, args.data, args.package_photos)
    rows = sweep(validation, groups, args.keep or KEEP_SHARES)
    aurocs = {name: auroc(validation, scores) for name, scores in groups["far_out"].items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "version": predictor.version,
                               "served_as": {"dtype": str(predictor.amp_dtype or "fp32"), "tta": predictor.tta,
                                             "extra_views_below": predictor.confident_at},
                               "far_out_auroc": aurocs, "rows": rows}, indent=1))
    print(markdown(rows, list(groups["far_out"])))
    print("far-out AUROC as served: " + ", ".join(f"{name} {value:.3f}" for name, value in aurocs.items()))


if __name__ == "__main__":
    main()
