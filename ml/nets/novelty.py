"""'None of these': how unlike the training images a photo is, and where "not recognised" starts.

Every score is "higher = more novel", computed from what one forward pass already gives (the
calibrated logits and the penultimate features):
- `msp`: minus the top softmax probability (the baseline everyone starts from);
- `energy`: minus logsumexp of the calibrated logits (Liu et al., 2020), at a temperature t:
  -t * logsumexp(logits / t); t = 1 is the paper's score, a higher t counts the runner-up classes'
  logits too, not only the top one;
- `knn`: distance from the L2-normalised features to their k-th nearest neighbour among a sample
  of normalised training features (Sun et al., 2022); the sample is stored with the model.
The method is chosen by measurement (docs/model.md, docs/experiments/); the threshold is the score that
`keep_share` of the validation images stay under.
"""

import torch
import torch.nn.functional as F

METHODS = ("msp", "energy", "knn")
# Energy: it separates every far-out set better than knn and msp
# (docs/experiments/2026-12-02-photo-training-label-smoothing.md).
DEFAULT_METHOD = "energy"
# t = 4: on the open-set protocol's 8-class models the held-out classes' mean AUROC rises from
# t = 1 up to t = 4 and no further, and the far-out sets hardly depend on t
# (docs/experiments/2026-12-02-no-label-smoothing-energy-t4.md).
ENERGY_TEMPERATURE = 4.0
# Validation images that must stay recognised at the threshold. 0.992 since the prediction sets
# answer "between two classes": on the shipped model, as served (python -m scripts.refusal_sweep
# --keep ...), 0.95 -> 0.99 -> 0.992 refuses 5.4 -> 1.2 -> 0.9% of held-out validation images,
# 16.5 -> 8.2 -> 7.4% of corrupted ones (the bar: 8%), 79 -> 61 -> 57% of the package photos,
# and still every noise, solid-colour and digit image (docs/model.md, "Where none of these starts").
DEFAULT_KEEP_SHARE = 0.992
KNN_K = 10                 # k for a bank of ~10,000 training features (Sun et al.: k=50 for 50,000)
BANK_SIZE = 10_000         # training features stored with the model (float16, about 7.7 MB at 384-d)


def normalise(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=1)


def kth_neighbour_distance(features: torch.Tensor, bank: torch.Tensor, k: int = KNN_K) -> torch.Tensor:
    """Euclidean distance of each normalised feature row to its k-th nearest row of `bank`, for all
    rows at once: what an exported graph computes (ml/export/graph.py), as it cannot loop over a batch
    length that is fixed when traced."""
    similarity = normalise(features) @ bank.float().T
    kth = similarity.topk(min(k, len(bank)), dim=1).values[:, -1]
    return (2 - 2 * kth).clamp_min(0).sqrt()


def knn_distance(features: torch.Tensor, bank: torch.Tensor, k: int = KNN_K, chunk: int = 1024) -> torch.Tensor:
    """`kth_neighbour_distance` in chunks of rows, so a large batch's similarity matrix stays small."""
    bank = bank.float()
    return torch.cat([kth_neighbour_distance(features[start:start + chunk], bank, k)
                      for start in range(0, len(features), chunk)])


def energy_temperature(spec: dict) -> float:
    """The energy score's temperature a card's novelty section names (1 in cards from before it)."""
    return float(spec.get("energy_temperature", 1.0))


def novelty_scores(method: str, logits: torch.Tensor, features: torch.Tensor = None,
                   bank: torch.Tensor = None, temperature: float = 1.0) -> torch.Tensor:
    """Novelty per row (higher = less like the training images); `logits` are the calibrated
    ones (divided by the card's temperature), `temperature` the energy score's own."""
    if method == "msp":
        return -logits.float().softmax(1).amax(1)
    if method == "energy":
        return -temperature * torch.logsumexp(logits.float() / temperature, dim=1)
    if method == "knn":
        return knn_distance(features, bank)
    raise ValueError(f"unknown novelty method {method!r}; choose from {METHODS}")


HISTOGRAM_BINS = 24


def score_histogram(scores: torch.Tensor, threshold: float, bins: int = HISTOGRAM_BINS) -> dict:
    """The validation split's novelty scores binned, for comparing live traffic with them (the
    dashboard bins served scores at the same edges): `bins` equal bins from the scores' 0.5th
    percentile to as far past the threshold as that is below it, so the threshold is the middle
    edge and the upper half holds what is refused; the first and last bins are open-ended."""
    scores = scores.double()
    low = float(torch.quantile(scores, 0.005))
    high = threshold + (threshold - low) if threshold > low else low + 1.0
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    return {"edges": [round(float(e), 6) for e in edges], "counts": bin_counts(scores, edges).tolist(),
            "images": len(scores)}


def bin_counts(scores: torch.Tensor, edges) -> torch.Tensor:
    """Counts of `scores` in the bins between `edges`, the first and last bins open-ended."""
    edges = torch.as_tensor(edges, dtype=torch.float64)
    index = torch.bucketize(scores.double(), edges[1:-1], right=True)
    return torch.bincount(index, minlength=len(edges) - 1)


def fit_threshold(scores: torch.Tensor, keep_share: float = DEFAULT_KEEP_SHARE) -> float:
    """The novelty at or under which at least `keep_share` of these (in-distribution) scores fall:
    the score at that quantile itself ("higher"), as the linear interpolation between two scores
    could leave up to one image fewer than the share recognised (9 of 10 for 95%)."""
    return float(torch.quantile(scores.float(), keep_share, interpolation="higher"))


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """Area under the ROC curve of telling `unknown` from `known` by score (higher = unknown):
    the chance a random unknown scores above a random known, ties counting half."""
    scores = torch.cat([known, unknown]).double()
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    for value in scores.unique()[(scores.unique(return_counts=True)[1] > 1)]:
        tied = scores == value
        ranks[tied] = ranks[tied].mean()  # average ranks of ties
    n_known, n_unknown = len(known), len(unknown)
    return float((ranks[n_known:].sum() - n_unknown * (n_unknown + 1) / 2) / (n_known * n_unknown))


def training_bank(features: torch.Tensor, size: int = BANK_SIZE, seed: int = 0) -> torch.Tensor:
    """A fixed random sample of normalised training features, float16, to store with the model."""
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(features), generator=generator)[:size]
    return normalise(features[pick]).half()
