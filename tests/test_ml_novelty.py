"""ml.nets.novelty and what it stands on: scores, AUROC, the threshold, the feature bank and its file,
the open-set split (Dataset.only_classes), and the features tta_outputs gives."""

import math

import pytest
import torch

from conftest import make_model_dir
from ml import CIFAR10_CLASSES
from ml.data.batches import normalize
from ml.data.sources import Dataset, Split
from ml.nets.modelfile import CARD_FILE, NOVELTY_FILE, ModelFileError, load_model_dir, load_novelty_bank, novelty_file
from ml.nets.models import build_model, tta_logits, tta_outputs
from ml.nets.novelty import (auroc, bin_counts, energy_temperature, fit_threshold, knn_distance, normalise,
                             novelty_scores, score_histogram, training_bank)


def brute_force_auroc(known, unknown) -> float:
    pairs = [(1.0 if u > k else 0.5 if u == k else 0.0) for u in unknown.tolist() for k in known.tolist()]
    return sum(pairs) / len(pairs)


def test_auroc_on_hand_made_cases():
    low, high = torch.tensor([0.1, 0.2, 0.3]), torch.tensor([0.7, 0.8, 0.9, 1.0])
    assert auroc(low, high) == pytest.approx(1.0)   # every unknown above every known
    assert auroc(high, low) == pytest.approx(0.0)   # reversed
    assert auroc(torch.ones(5), torch.ones(3)) == pytest.approx(0.5)  # identical: no separation
    # ties count half: pairs (1>0) (1=1) (2>0) (2>1) -> 3.5 of 4
    assert auroc(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])) == pytest.approx(0.875)
    # one unknown among knowns: its rank decides
    assert auroc(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([2.5])) == pytest.approx(0.5)


def test_auroc_with_many_ties_matches_counting_pairs():
    g = torch.Generator().manual_seed(0)
    known = torch.randint(0, 6, (40,), generator=g).float()
    unknown = torch.randint(2, 9, (25,), generator=g).float()
    assert auroc(known, unknown) == pytest.approx(brute_force_auroc(known, unknown), abs=1e-12)


@pytest.mark.parametrize("n", [10, 37, 40, 123, 1000])
@pytest.mark.parametrize("keep_share", [0.9, 0.95, 0.99])
def test_fitted_threshold_keeps_the_stated_share_recognised(n, keep_share):
    scores = torch.rand(n, generator=torch.Generator().manual_seed(n))
    threshold = fit_threshold(scores, keep_share)
    recognised = int((scores <= threshold).sum())  # as Predictor and the reports decide
    at_least = math.ceil(keep_share * n - 1e-9)
    assert at_least <= recognised <= at_least + 1
    assert threshold in scores.tolist()  # one of the scores: no image sits just above it by interpolation


def test_the_validation_histogram_has_the_threshold_in_the_middle_and_counts_every_score():
    scores = torch.randn(5000, generator=torch.Generator().manual_seed(0)) - 10
    threshold = fit_threshold(scores, 0.95)
    histogram = score_histogram(scores, threshold)
    edges, counts = histogram["edges"], histogram["counts"]
    assert len(edges) == len(counts) + 1 and edges == sorted(edges)
    assert edges[len(counts) // 2] == pytest.approx(threshold, abs=1e-5)
    assert sum(counts) == histogram["images"] == 5000  # open-ended ends: nothing falls outside
    refused = sum(counts[len(counts) // 2:])
    assert refused == pytest.approx(250, abs=15)  # about 5% above the threshold (bins are left-closed)
    assert bin_counts(torch.tensor([-1e9, edges[1], 1e9]), edges).tolist() == [1, 1] + [0] * (len(counts) - 3) + [1]


def test_knn_distance_is_zero_for_a_bank_member_and_grows_away_from_it():
    g = torch.Generator().manual_seed(1)
    features = torch.randn(50, 16, generator=g)
    bank = normalise(features)
    assert knn_distance(features, bank, k=1).abs().max() < 1e-3  # each is its own nearest neighbour
    assert knn_distance(features * 7.5, bank, k=1).abs().max() < 1e-3  # normalised: scale does not matter
    tenth = knn_distance(features, bank, k=10)
    assert (tenth > 0.1).all() and (knn_distance(features, bank, k=20) >= tenth).all()
    far = torch.randn(20, 16, generator=g)
    assert (knn_distance(far, bank, k=1) > 0.1).all()
    assert torch.allclose(knn_distance(far, bank, chunk=3), knn_distance(far, bank), atol=1e-6)
    # the float16 bank stored with a model still finds its members
    assert knn_distance(features, training_bank(features, size=100), k=1).max() < 0.02


def test_training_bank_is_a_fixed_sample_of_unit_rows():
    features = torch.randn(300, 8, generator=torch.Generator().manual_seed(2)) * 3
    bank = training_bank(features, size=100)
    assert bank.shape == (100, 8) and bank.dtype == torch.float16
    assert torch.allclose(bank.float().norm(dim=1), torch.ones(100), atol=1e-3)
    assert torch.equal(training_bank(features, size=100), bank)
    assert not torch.equal(training_bank(features, size=100, seed=1), bank)
    assert len(training_bank(features, size=1000)) == 300


def test_novelty_scores_by_method():
    logits = torch.tensor([[8.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    msp = novelty_scores("msp", logits)
    assert torch.allclose(msp, -logits.softmax(1).amax(1))
    assert msp[0] < msp[1]  # a confident answer is less novel than a hesitant one
    assert torch.allclose(novelty_scores("energy", logits), -torch.logsumexp(logits, 1))
    assert torch.allclose(novelty_scores("energy", logits, temperature=4.0), -4 * torch.logsumexp(logits / 4, 1))
    # a card from before the temperature existed scores as before
    assert energy_temperature({"method": "energy"}) == 1.0 and energy_temperature({"energy_temperature": 4}) == 4.0
    features = torch.randn(2, 4)
    bank = normalise(torch.randn(30, 4))
    assert torch.equal(novelty_scores("knn", logits, features, bank), knn_distance(features, bank))
    with pytest.raises(ValueError, match="unknown novelty method"):
        novelty_scores("mahalanobis", logits)


# ---- the bank's file in a model folder ----

def model_dir_with_bank(path, bank):
    files, digest = novelty_file(bank)
    make_model_dir(path)
    for name, data in files.items():
        (path / name).write_bytes(data)
    card = (path / CARD_FILE)
    import json
    spec = {"method": "knn", "threshold": 0.5, "bank_sha256": digest}
    card.write_text(json.dumps(dict(json.loads(card.read_text()), novelty=spec)))
    return path


def test_novelty_bank_loads_and_a_tampered_one_is_refused_naming_the_file(tmp_path):
    bank = training_bank(torch.randn(40, 16))
    folder = model_dir_with_bank(tmp_path / "m", bank)
    _, card = load_model_dir(folder)
    assert torch.equal(load_novelty_bank(folder, card), bank)
    data = bytearray((folder / NOVELTY_FILE).read_bytes())
    data[-3] ^= 0xFF  # one flipped byte in the tensor data
    (folder / NOVELTY_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=NOVELTY_FILE) as error:
        load_novelty_bank(folder, card)
    assert "checksum" in str(error.value)
    from ml.predict.predictor import Predictor
    with pytest.raises(ModelFileError, match=NOVELTY_FILE):
        Predictor(folder, device="cpu")
    (folder / NOVELTY_FILE).unlink()
    with pytest.raises(ModelFileError, match=f"{NOVELTY_FILE}: missing"):
        load_novelty_bank(folder, card)


def test_a_card_without_a_bank_needs_no_file(tmp_path):
    folder = make_model_dir(tmp_path / "plain")
    _, card = load_model_dir(folder)
    assert load_novelty_bank(folder, card) is None
    assert load_novelty_bank(folder, dict(card, novelty={"method": "msp", "threshold": -0.5})) is None


# ---- the open-set split ----

def test_only_classes_relabels_and_val_outside_returns_the_rest():
    labels = torch.arange(10).repeat(3)
    images = labels.view(-1, 1, 1, 1).expand(-1, 3, 32, 32).to(torch.uint8).contiguous()  # pixel = label
    dataset = Dataset(Split(images, labels), Split(images[:20], labels[:20]), list(CIFAR10_CLASSES),
                      "validation", "hand-made")
    names = ["truck", "cat", "dog"]  # order given, not the dataset's
    known = dataset.only_classes(names)
    assert known.classes == names
    for split in (known.train, known.val):
        original = split.images[:, 0, 0, 0].long()  # the old label, kept in the pixels
        assert torch.equal(torch.tensor([CIFAR10_CLASSES.index(names[i]) for i in split.labels]), original)
    assert len(known.train) == 9 and len(known.val) == 6
    assert sorted(known.val.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    rest = dataset.val_outside(names)
    assert len(rest) == 14 and not set(rest.labels.tolist()) & {3, 5, 9}
    assert torch.equal(known.unknown_val.labels, rest.labels) and torch.equal(known.unknown_val.images, rest.images)
    with pytest.raises(ValueError, match="unicorn"):
        dataset.only_classes(["cat", "unicorn"])


# ---- features from the forward pass ----

@pytest.mark.parametrize("arch, kwargs, width", [("airnet", {"widths": [8, 16, 24]}, 24), ("seednet", {}, 32)])
def test_tta_outputs_give_logits_and_plain_view_features(arch, kwargs, width):
    torch.manual_seed(0)
    model = build_model(arch, **kwargs).eval()
    x = normalize(torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8))
    with torch.no_grad():
        plain_features = model.penultimate(x)
        for level in (0, 1, 2):
            logits, features = tta_outputs(model, x, level)
            assert logits.shape == (5, 10) and features.shape == (5, width)
            assert torch.allclose(features, plain_features)  # the un-augmented view at every level
            assert torch.equal(tta_logits(model, x, level), logits)
        assert torch.allclose(tta_outputs(model, x, 0)[0], model(x), atol=1e-6)
        mirrored = 0.5 * (model(x) + model(x.flip(3)))
        assert torch.allclose(tta_outputs(model, x, 1)[0], mirrored, atol=1e-5)
