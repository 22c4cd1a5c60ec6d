"""Energy, KNN on normalised features, and the two combined, on the far-out sets: is a combination
a stronger "none of these" score than energy alone, without retraining?

    python -m scripts.novelty_combined --model models/default --data data [--package-photos data/package-photos]

Both scores come from one pass at the card's TTA level, in fp32. The KNN bank is the same as the one
ml.calibrate builds: 10,000 training images, plain view. "Combined" standardises each score on the
validation split (subtracts the mean, divides by the standard deviation) and adds the two. Prints
the AUROC against the validation split for each far-out set.
"""

import argparse
from pathlib import Path

import torch

from ml.calibrate.finish import training_feature_bank
from ml.evaluate.farout import far_out_sets
from ml.nets.cardmodel import CardModel
from ml.nets.novelty import auroc, novelty_scores


def scores(card_model: CardModel, bank: torch.Tensor, images: torch.Tensor) -> dict:
    logits, features = card_model.outputs(images)
    return {"energy": novelty_scores("energy", logits, temperature=card_model.energy_temperature),
            "knn": novelty_scores("knn", logits, features, bank)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.novelty_combined", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--data", default="data")
    parser.add_argument("--package-photos", default=None)
    args = parser.parse_args(argv)
    card_model = CardModel.load(args.model)
    dataset = card_model.dataset(args.data)
    bank = training_feature_bank(card_model, dataset)
    known = scores(card_model, bank, dataset.val.images)
    centre = {m: (s.mean(), s.std()) for m, s in known.items()}

    def combined(by_method):
        return sum((by_method[m] - mean) / std for m, (mean, std) in centre.items())

    known["combined"] = combined(known)
    sets = far_out_sets(Path(args.package_photos) if args.package_photos else None)
    print("| far-out set | images | energy | knn | combined |\n|---|---|---|---|---|")
    for name, images in sets.items():
        unknown = scores(card_model, bank, images)
        unknown["combined"] = combined(unknown)
        print(f"| {name} | {len(images)} | " + " | ".join(f"{auroc(known[m], unknown[m]):.3f}"
                                                         for m in ("energy", "knn", "combined")) + " |")


if __name__ == "__main__":
    main()
