"""Conformal prediction sets (RAPS, Angelopoulos et al. 2021; APS is RAPS with lambda 0): the
classes a photo may be, with a stated coverage: on images like the calibration images, the true
class is in the set at least `coverage` of the time.

The score of class y for an image is the probability mass of every class at least as probable as y
(y included), plus `lambda * max(0, rank(y) - k_reg)`: the penalty keeps unlikely tail classes out,
so sets stay small when the top class is right. The threshold is the ceil((n + 1) * coverage)-th
smallest score of the true class over n calibration images (split conformal). A class is a
candidate when its score is at most the threshold; the most probable class always is, so a set is
never empty (which only adds coverage).

The non-randomised rule is used on purpose: a user who sends the same photo twice must get the same
set, and an exported model must be able to compute it from the card alone (ml/export). It is
conservative (coverage at least the stated level, a little over it in practice).

Calibration uses a fixed half of the validation split (`calibration_split`); the other half, never
seen by the threshold, measures the coverage and the set sizes stored in the card.

It lives in ml.nets, beside the card it is read from, because the card model, the predictor, the
suite and the export all apply the rule; ml.calibrate only fits it.
"""

import math

import torch

DEFAULT_COVERAGE = 0.95
DEFAULT_METHOD = "raps"
METHODS = ("aps", "raps")
# RAPS's regularisation: chosen by measurement on the calibration half (docs/model.md); lambda 0
# is APS, whose sets on a 92%-accurate 10-class model grow long tails of improbable classes.
RAPS_LAMBDA = 0.1
RAPS_K_REG = 1
SPLIT_SEED = 0
SURE, UNSURE, NONE = "sure", "unsure", "none"


def set_sizes(probs: torch.Tensor, threshold: float, lam: float = 0.0, k_reg: int = 0) -> torch.Tensor:
    """Set size per row of probabilities (N, classes): the sets are the `size` most probable
    classes, since a class's score grows with its rank."""
    ranked = probs.sort(1, descending=True).values
    ranks = torch.arange(1, probs.shape[1] + 1, dtype=probs.dtype)
    scores = ranked.cumsum(1) + lam * (ranks - k_reg).clamp(min=0)
    return (scores <= threshold).sum(1).clamp(min=1)


def true_class_scores(probs: torch.Tensor, labels: torch.Tensor, lam: float = 0.0, k_reg: int = 0) -> torch.Tensor:
    """The conformal score of each row's true class."""
    order = probs.argsort(1, descending=True)
    ranked = probs.gather(1, order).cumsum(1)
    rank = (order == labels[:, None]).float().argmax(1)  # 0-based position of the true class
    penalty = lam * (rank + 1 - k_reg).clamp(min=0).to(probs.dtype)
    return ranked.gather(1, rank[:, None]).squeeze(1) + penalty


def quantile_threshold(scores: torch.Tensor, coverage: float) -> float:
    """The ceil((n + 1) * coverage)-th smallest score; infinite (every class) when n is too small
    for that coverage."""
    n = len(scores)
    k = math.ceil((n + 1) * coverage)
    return math.inf if k > n else float(scores.sort().values[k - 1])


def calibration_split(n: int, seed: int = SPLIT_SEED):
    """(calibration indices, held-out indices) of a validation split of n images: a fixed
    permutation, its first half calibrates and the rest measures."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[:n // 2], order[n // 2:]


def regularisation(method: str, lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG):
    """(lambda, k_reg) of a method: APS has no penalty."""
    if method not in METHODS:
        raise ValueError(f"unknown conformal method {method!r}; choose from {METHODS}")
    return (0.0, 0) if method == "aps" else (float(lam), int(k_reg))


def set_metrics(probs: torch.Tensor, labels: torch.Tensor, spec: dict) -> dict:
    """Coverage (share of true classes in their set), mean set size and the size histogram."""
    sizes = set_sizes(probs, spec["threshold"], spec["lambda"], spec["k_reg"])
    scores = true_class_scores(probs, labels, spec["lambda"], spec["k_reg"])
    top1 = probs.argmax(1) == labels
    covered = (scores <= spec["threshold"]) | top1  # the top class is always in the set
    histogram = torch.bincount(sizes, minlength=probs.shape[1] + 1)[1:].tolist()
    return {"images": len(labels), "coverage": covered.float().mean().item(),
            "mean_set_size": sizes.float().mean().item(), "size_histogram": histogram}


def fit_conformal(probs: torch.Tensor, labels: torch.Tensor, coverage: float = DEFAULT_COVERAGE,
                  method: str = DEFAULT_METHOD, lam: float = RAPS_LAMBDA, k_reg: int = RAPS_K_REG) -> dict:
    """The card's `conformal` section from a validation split's calibrated probabilities: the
    threshold fitted on its calibration half, and the coverage and set sizes on the held-out half."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage must be between 0 and 1, not {coverage}")
    lam, k_reg = regularisation(method, lam, k_reg)
    fit, held_out = calibration_split(len(labels))
    threshold = quantile_threshold(true_class_scores(probs[fit], labels[fit], lam, k_reg), coverage)
    threshold = min(threshold, 1.0 + lam * probs.shape[1])  # too few images: every class (finite, for JSON)
    spec = {"method": method, "coverage": coverage, "threshold": threshold, "lambda": lam, "k_reg": k_reg,
            "split": {"seed": SPLIT_SEED, "calibration_images": len(fit), "held_out_images": len(held_out),
                      "rule": "torch.randperm(n, generator=torch.Generator().manual_seed(seed)) of the "
                              "validation split: the first n // 2 calibrate, the rest measure"}}
    spec["held_out"] = set_metrics(probs[held_out], labels[held_out], spec)
    return spec


def candidates(probs, classes, spec) -> list:
    """The classes in the set of one row of probabilities, most probable first; just the top class
    without a conformal section (a card from before them)."""
    order = probs.argsort(descending=True).tolist()
    if not spec:
        return [classes[order[0]]]
    size = int(set_sizes(probs[None], spec["threshold"], spec["lambda"], spec["k_reg"])[0])
    return [classes[i] for i in order[:size]]


def answer_kind(candidates_: list, recognised: bool) -> str:
    """'none' when the photo is unlike all the classes (novelty over its threshold); else 'sure'
    with one candidate and 'unsure' with several, however many (docs/model.md: a set of four or
    more is still an answer among them, not a refusal, which is for photos of none of the classes)."""
    if not recognised:
        return NONE
    return SURE if len(candidates_) == 1 else UNSURE


def set_rule(spec: dict) -> str:
    """The rule in words, for an export card: a client computes the set from the probabilities."""
    return (f"sort the probabilities in decreasing order; the class at rank r (1-based) is a candidate when the "
            f"sum of the r highest probabilities + lambda * max(0, r - k_reg) <= threshold "
            f"(lambda {spec['lambda']:g}, k_reg {spec['k_reg']}); the most probable class always is")
