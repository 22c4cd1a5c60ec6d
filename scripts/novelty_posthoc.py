"""Post-hoc novelty scores side by side on one trained model, without retraining it: is there a
score stronger than the served energy on the open-set protocol's unknown classes (near) and on the
far-out sets (far)?

    python -m scripts.novelty_posthoc --model runs/open-set-base/airplane-truck --data data
    python -m scripts.novelty_posthoc --model models/default --data data --package-photos data/package-photos

For an 8-class model of `scripts.open_set` the unknowns are the held-out classes' validation
images, then the far-out sets; for a 10-class model the far-out sets alone. The known images are
the model's validation split. Every score is "higher = more novel":

- energy (served): the card's score, -t*logsumexp(logits/t) at its t, on its TTA level;
- msp, maxlogit, energy t=1: the plain view's calibrated logits;
- gen: generalised entropy of the softmax, sum of p^g (1-p)^g with g = 0.1 (Liu et al., CVPR 2023);
- knn: distance to the k-th nearest L2-normalised training feature (Sun et al., ICML 2022), k = 50
  over every training image (the paper's setting) and k = 10 over the product's 10,000-image bank;
- mahalanobis: the smallest distance to a class mean under one covariance shared by the classes,
  on the training features (Lee et al., NeurIPS 2018, without input perturbation);
- vim: the features' norm outside the principal subspace of the training features, scaled to the
  logits' size, minus the logsumexp of the logits (Wang et al., CVPR 2022; the head has no bias,
  so the origin is zero);
- energy + knn, energy + mahalanobis: each standardised on the known images, then added.

Every feature score uses the plain view's penultimate features, in fp32.
"""

import argparse
from pathlib import Path

import torch

from ml.evaluate.farout import far_out_sets
from ml.nets.cardmodel import CardModel
from ml.nets.novelty import KNN_K, auroc, knn_distance, normalise, novelty_scores, training_bank

GEN_GAMMA = 0.1
KNN_K_FULL = 50        # Sun et al.'s k for CIFAR-10's 50,000 training images
COMBINED = {"energy + knn": ("energy (served)", "knn k=50"),
            "energy + mahalanobis": ("energy (served)", "mahalanobis")}


class FeatureScores:
    """What the feature scores need from the training images, fitted once."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, head_weight: torch.Tensor):
        features = features.double()
        self.bank = normalise(features).float()
        self.small_bank = training_bank(features)  # the product's bank: the same sample ml.calibrate stores
        classes = int(labels.max()) + 1
        self.means = torch.stack([features[labels == c].mean(0) for c in range(classes)])
        centred = features - self.means[labels]
        covariance = centred.T @ centred / len(features)
        self.precision = torch.linalg.pinv(covariance, hermitian=True)
        # ViM: the principal subspace of the (uncentred: no head bias) training features
        dim = features.shape[1] // 2
        _, eigenvectors = torch.linalg.eigh(features.T @ features / len(features))
        self.residual_basis = eigenvectors[:, :-dim]  # eigh sorts ascending: the smallest directions
        logits = features @ head_weight.double().T
        self.vim_alpha = float(logits.amax(1).mean() / self.residual(features).mean())
        self.head_weight = head_weight.double()

    def residual(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() @ self.residual_basis).norm(dim=1)

    def scores(self, features: torch.Tensor) -> dict:
        features = features.double()
        difference = features[:, None, :] - self.means[None]  # (N, classes, dim)
        mahalanobis = torch.einsum("ncd,de,nce->nc", difference, self.precision, difference).amin(1)
        logits = features @ self.head_weight.T
        return {"knn k=50": knn_distance(features.float(), self.bank, KNN_K_FULL),
                "knn k=10, 10k bank": knn_distance(features.float(), self.small_bank, KNN_K),
                "mahalanobis": mahalanobis.float(),
                "vim": (self.vim_alpha * self.residual(features) - torch.logsumexp(logits, 1)).float()}


def logit_scores(card_model: CardModel, images: torch.Tensor, feature_scores: FeatureScores) -> dict:
    served_logits, _ = card_model.outputs(images)
    raw_logits, features = card_model.raw_outputs(images, tta=0)
    logits = (raw_logits / card_model.temperature).float()
    p = logits.softmax(1)
    return {"energy (served)": card_model.novelty(served_logits, method="energy"),
            "energy t=1": novelty_scores("energy", logits),
            "msp": novelty_scores("msp", logits),
            "maxlogit": -logits.amax(1),
            "gen": (p ** GEN_GAMMA * (1 - p) ** GEN_GAMMA).sum(1),
            **feature_scores.scores(features)}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.novelty_posthoc", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (a 10-class or an open-set 8-class one)")
    parser.add_argument("--data", default="data")
    parser.add_argument("--package-photos", default=None)
    args = parser.parse_args(argv)
    card_model = CardModel.load(args.model)
    dataset = card_model.dataset(args.data)
    _, train_features = card_model.raw_outputs(dataset.train.images, tta=0)
    head = card_model.model.head.weight.detach() * card_model.model.output_scale
    feature_scores = FeatureScores(train_features, dataset.train.labels, head)
    known = logit_scores(card_model, dataset.val.images, feature_scores)
    centre = {m: (s.mean(), s.std()) for m, s in known.items()}

    def with_combined(scores):
        for name, methods in COMBINED.items():
            scores[name] = sum((scores[m] - centre[m][0]) / centre[m][1] for m in methods)
        return scores

    with_combined(known)
    unknown_sets = far_out_sets(Path(args.package_photos) if args.package_photos else None)
    if dataset.unknown_val is not None:
        unknown_sets = {"held-out classes": dataset.unknown_val.images, **unknown_sets}
    methods = list(known)
    print(f"{args.model}: {len(dataset.val)} known validation images; AUROC against them\n")
    print("| unknown set | images | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for name, images in unknown_sets.items():
        unknown = with_combined(logit_scores(card_model, images, feature_scores))
        print(f"| {name} | {len(images)} | " + " | ".join(f"{auroc(known[m], unknown[m]):.3f}" for m in methods)
              + " |")


if __name__ == "__main__":
    main()
