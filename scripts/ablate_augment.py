"""Augmentation ablation: one row per photo augmentation, same recipe, seed and robustness suite.

    python -m scripts.ablate_augment [--epochs 4] [--out runs/ablation]

Each row trains the `fast` recipe (seed 0, 4 epochs by default, to fit the 2-core machine) with
one augmentation switched on, through `python -m ml.train`, which ends by measuring the suite
into the card; a finished row's folder is reused. Prints a markdown table (as in docs/experiments/).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROWS = [  # (row name, the flags that switch its augmentation on)
    ("baseline (flip + translate)", []),
    ("+ serving-path round trips, 50%", ["--serving-aug", "0.5"]),
    ("+ blur and sensor noise, 30%", ["--blur-aug", "0.3"]),
    ("+ colour, contrast, greyscale, 30%", ["--colour-aug", "0.3"]),
    ("+ outlier exposure, 10% of the batch", ["--outlier-share", "0.1"]),
    ("+ random-resized crop, 30%", ["--crop-aug", "0.3"]),
    ("+ cutout, 50%", ["--cutout-aug", "0.5"]),
    ("+ resampling consistency (JS, weight 12), 25%", ["--consistency", "12"]),
]
FOLDERS = ["baseline", "serving", "blur", "colour", "outliers", "crop", "cutout", "consistency"]


def train_row(folder: Path, flags, epochs: int, data: str):
    if (folder / "card.json").is_file():
        return
    command = [sys.executable, "-m", "ml.train", "--preset", "fast", "--epochs", str(epochs), "--data", data,
               "--out", str(folder), *flags]
    with open(folder.with_suffix(".log"), "w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)


def measured(folder: Path, data: str) -> dict:
    """The card's figures; a card written before the suite existed is refitted and measured by
    `python -m ml.calibrate` first, as training now ends."""
    if "robustness" not in json.loads((folder / "card.json").read_text()):
        subprocess.run([sys.executable, "-m", "ml.calibrate", "--model", str(folder), "--data", data],
                       check=True, capture_output=True)
    return json.loads((folder / "card.json").read_text())


def table_row(name, card) -> str:
    variants, corruptions = card["robustness"]["variants"], card["robustness"]["corruptions"]
    per_second = [r for r in card["history"] if "train_loss" in r]
    seconds = card["training"]["train_seconds"]
    images = card["data"]["train_images"] * len(per_second)
    return (f"| {name} | {card['evaluation']['accuracy']:.2%} | {variants['agreement']:.2%} | "
            f"{variants['accuracy']:.2%} | {variants['ece']:.2%} | {corruptions['accuracy']:.2%} | "
            f"{corruptions['ece']:.2%} | {far_out_auroc(card):.3f} | {images / seconds:.0f} |")


def far_out_auroc(card) -> float:
    """Mean AUROC of the card's novelty method over the far-out sets."""
    sets = card["novelty"]["far_out"]["sets"].values()
    return sum(s["auroc"][card["novelty"]["method"]] for s in sets) / len(sets)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Train and measure one row per photo augmentation.")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the fast recipe per row")
    parser.add_argument("--data", default="data", help="dataset root")
    parser.add_argument("--out", default="runs/ablation", help="folder for the rows' model folders")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| row | clean accuracy | variant agreement | variant accuracy | variant ECE | "
          "corruption accuracy | corruption ECE | far-out AUROC | training images/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (name, flags), folder in zip(ROWS, FOLDERS):
        train_row(out / folder, flags, args.epochs, args.data)
        print(table_row(name, measured(out / folder, args.data)), flush=True)


if __name__ == "__main__":
    main()
