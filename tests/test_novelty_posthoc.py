"""scripts.novelty_posthoc's feature scores (KNN, Mahalanobis, ViM) on hand-made features: each
tells features like the training ones from features off their classes, and each is what its
definition says on a case small enough to work out."""

import pytest
import torch

from ml.nets.novelty import auroc
from scripts.novelty_posthoc import FeatureScores

CLASSES, DIM = 4, 16


def clustered(count: int, seed: int, spread: float = 0.3):
    """Features in CLASSES tight clusters on the first CLASSES axes (positive, as after a ReLU/max-pool),
    and a head whose row c points along axis c."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % CLASSES
    centres = 3 * torch.eye(CLASSES, DIM)
    features = (centres[labels] + spread * torch.randn(count, DIM, generator=generator)).abs()
    return features, labels


def test_every_feature_score_separates_off_class_features():
    features, labels = clustered(2000, seed=0)
    scores = FeatureScores(features, labels, torch.eye(CLASSES, DIM))
    known = scores.scores(clustered(400, seed=1)[0])
    generator = torch.Generator().manual_seed(2)
    # off every class: mass on the axes no class uses, at a similar norm
    off = torch.zeros(400, DIM)
    off[:, CLASSES:] = (3 / (DIM - CLASSES) ** 0.5) + 0.3 * torch.randn(400, DIM - CLASSES, generator=generator)
    unknown = scores.scores(off.abs())
    for method in known:
        assert auroc(known[method], unknown[method]) > 0.99, method


def test_mahalanobis_is_the_smallest_class_distance():
    # two classes at -1 and +1 on one axis with unit within-class variance: distance squared to the nearer mean
    features = torch.tensor([[-2.0], [0.0], [0.0], [2.0]])
    labels = torch.tensor([0, 0, 1, 1])
    scores = FeatureScores(features, labels, torch.ones(2, 1))
    assert scores.scores(torch.tensor([[3.0], [-1.0]]))["mahalanobis"].tolist() == pytest.approx([4.0, 0.0])


def test_vim_residual_is_the_norm_off_the_principal_subspace():
    # training features span the first two axes only (4-d features: the principal half is 2-d)
    generator = torch.Generator().manual_seed(0)
    features = torch.zeros(500, 4)
    features[:, :2] = torch.randn(500, 2, generator=generator)
    features[:, 2:] = 1e-3 * torch.randn(500, 2, generator=generator)
    labels = torch.arange(500) % 2
    scores = FeatureScores(features, labels, torch.eye(2, 4))
    assert scores.residual(torch.tensor([[5.0, -5.0, 3.0, 4.0]])).item() == pytest.approx(5.0, rel=1e-3)
