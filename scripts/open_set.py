"""Open-set protocol for the "none of these" score: train on 8 classes, treat the other 2 as unknown.

    python -m scripts.open_set [--epochs 8] [--out runs/open-set] [--shipped-card models/default]
    python -m scripts.open_set --out runs/open-set-logitnorm --train-flags "--logit-norm 0.04" --held-out airplane+truck

For each class split, `python -m ml.train --classes ...` trains the `fast` recipe on the 8 known
classes, with the shipped `best` preset's photo augmentations, outlier exposure and label smoothing (the novelty
threshold is fitted on their validation images, as for the shipped model),
then `python -m ml.evaluate --novelty` scores the 2 held-out classes' validation images as
unknowns. Prints AUROC per method and the share of unknowns refused at the threshold; with
--shipped-card, writes the summary into that card's novelty section for the dashboard.
"""

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

from ml import CIFAR10_CLASSES
from ml.data.files import write_json_atomic
from ml.train.presets import NO_ROBUSTNESS_TRAINING, PRESETS

FIGURES = ("images", "auroc", "refused")  # per split, as the far-out sets report them
HELD_OUT = [("cat", "dog"), ("airplane", "truck"), ("bird", "frog")]  # animals, vehicles, mixed
SHIPPED_KEYS = [*NO_ROBUSTNESS_TRAINING, "label_smoothing"]  # what the shipped `best` adds to `fast`'s recipe
SHIPPED_FLAGS = [flag for key in SHIPPED_KEYS for flag in (f"--{key.replace('_', '-')}", str(PRESETS["best"][key]))]


def run_split(held_out, out: Path, epochs: int, data: str, train_flags=()) -> dict:
    folder = out / "-".join(held_out)
    known = [c for c in CIFAR10_CLASSES if c not in held_out]
    if not (folder / "card.json").is_file():
        with open(folder.with_suffix(".log"), "w") as log:
            subprocess.run([sys.executable, "-m", "ml.train", "--preset", "fast", "--epochs", str(epochs),
                            "--data", data, "--out", str(folder), "--no-suite", *SHIPPED_FLAGS,
                            *train_flags, "--classes", *known],
                           check=True, stdout=log, stderr=subprocess.STDOUT)
    report = folder.with_suffix(".novelty.json")  # kept, so a rerun measures only what is missing
    if not report.is_file():
        subprocess.run([sys.executable, "-m", "ml.evaluate", "--model", str(folder), "--data", data, "--novelty",
                        "--out", str(report)], check=True, capture_output=True)
    card = json.loads((folder / "card.json").read_text())
    novelty = json.loads(report.read_text())["novelty"]
    unknown = novelty["sets"]["held-out classes"]
    return {"held_out": list(held_out), "accuracy": card["evaluation"]["accuracy"], "auroc": unknown["auroc"],
            "images": unknown["images"],
            "refused": unknown["refused"], "known_recognised": novelty["known_recognised"],
            "method": card["novelty"]["method"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Open-set AUROC of the novelty score over class splits.")
    parser.add_argument("--epochs", type=int, default=8, help="epochs of the fast recipe (its own: 8)")
    parser.add_argument("--data", default="data", help="dataset root")
    parser.add_argument("--out", default="runs/open-set", help="folder for the 8-class models")
    parser.add_argument("--train-flags", default="", help="more ml.train flags for every split (an experiment: "
                        "use its own --out)")
    parser.add_argument("--held-out", action="append", default=None, metavar="CLASS+CLASS",
                        help="run only this split (repeatable; default: all three of HELD_OUT)")
    parser.add_argument("--shipped-card", default=None,
                        help="model folder whose card gets the summary under novelty.open_set")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    splits = [tuple(h.split("+")) for h in args.held_out] if args.held_out else HELD_OUT
    unknown = [h for h in splits if h not in HELD_OUT]
    if unknown or (args.shipped_card and splits != HELD_OUT):
        parser.error(f"--held-out picks among {['+'.join(h) for h in HELD_OUT]}; --shipped-card needs all of them")
    results = [run_split(h, out, args.epochs, args.data, shlex.split(args.train_flags)) for h in splits]
    methods = list(results[0]["auroc"])
    print("| held out | 8-class accuracy | " + " | ".join(f"AUROC {m}" for m in methods)
          + " | unknowns refused | known recognised |")
    print("|---|---|" + "---|" * len(methods) + "---|---|")
    for r in results:
        print(f"| {' + '.join(r['held_out'])} | {r['accuracy']:.2%} | "
              + " | ".join(f"{r['auroc'][m]:.3f}" for m in methods)
              + f" | {r['refused']:.1%} | {r['known_recognised']:.1%} |")
    mean = {m: sum(r["auroc"][m] for r in results) / len(results) for m in methods}
    refused = sum(r["refused"] for r in results) / len(results)
    print("| mean | | " + " | ".join(f"{mean[m]:.3f}" for m in methods) + f" | {refused:.1%} | |")
    if args.shipped_card:
        card_path = Path(args.shipped_card) / "card.json"
        card = json.loads(card_path.read_text())
        card["novelty"]["open_set"] = {"protocol": "fast recipe with best's robustness training and label "
                                                   f"smoothing, {args.epochs} epochs, 8 known classes",
                                       "splits": results, "mean_auroc": mean, "mean_refused": refused,
                                       # the far-out sets' shape, which the dashboard reads
                                       "sets": {" + ".join(r["held_out"]): {k: r[k] for k in FIGURES}
                                                for r in results}}
        write_json_atomic(card_path, card)


if __name__ == "__main__":
    main()
