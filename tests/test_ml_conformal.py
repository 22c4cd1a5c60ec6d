"""Conformal prediction sets (ml/nets/conformal.py): coverage at the stated level on synthetic
logits whose labels are drawn from their own softmax (so the probabilities are exactly calibrated),
the fixed calibration split, the set rule, the answer kinds."""

import json

import numpy as np
import pytest
import torch

from ml.nets import conformal


def synthetic(n, classes=10, seed=0, sharpness=3.0):
    """(probabilities, labels): labels drawn from the probabilities themselves."""
    generator = torch.Generator().manual_seed(seed)
    probs = (torch.randn(n, classes, generator=generator) * sharpness).softmax(1)
    labels = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return probs, labels


@pytest.mark.parametrize("method", conformal.METHODS)
@pytest.mark.parametrize("coverage", [0.9, 0.95])
def test_held_out_coverage_reaches_the_stated_level(method, coverage):
    probs, labels = synthetic(8000)
    spec = conformal.fit_conformal(probs, labels, coverage, method)
    held = spec["held_out"]
    assert held["images"] == 4000 and spec["split"]["calibration_images"] == 4000
    # split conformal guarantees >= coverage in expectation (4000 images: within 1.5 points); the
    # non-randomised sets over-cover, APS's most (its whole class at the boundary is in)
    assert coverage - 0.015 <= held["coverage"] <= coverage + 0.07
    assert 1 <= held["mean_set_size"] < 10
    assert sum(held["size_histogram"]) == 4000
    # the same sets on fresh data from the same distribution
    fresh = conformal.set_metrics(*synthetic(4000, seed=1), spec)
    assert fresh["coverage"] >= coverage - 0.015


def test_raps_sets_are_no_larger_than_aps_on_average():
    probs, labels = synthetic(8000)
    aps = conformal.fit_conformal(probs, labels, 0.95, "aps")["held_out"]
    raps = conformal.fit_conformal(probs, labels, 0.95, "raps")["held_out"]
    assert raps["mean_set_size"] <= aps["mean_set_size"] + 0.05


def test_calibration_split_is_fixed_and_disjoint():
    fit, held = conformal.calibration_split(101)
    again_fit, again_held = conformal.calibration_split(101)
    assert torch.equal(fit, again_fit) and torch.equal(held, again_held)
    assert len(fit) == 50 and len(held) == 51
    assert sorted(torch.cat([fit, held]).tolist()) == list(range(101))


def test_set_rule_and_candidates_most_probable_first():
    spec = {"threshold": 0.85, "lambda": 0.0, "k_reg": 0}
    probs = torch.tensor([0.1, 0.6, 0.0, 0.25, 0.05])
    # cumulative 0.6, 0.85, 0.95: the first two are within 0.85
    assert conformal.candidates(probs, list("abcde"), spec) == ["b", "d"]
    # a confident row: the top class alone; the top class is in even when its own score exceeds
    assert conformal.candidates(torch.tensor([0.9, 0.1]), ["x", "y"], spec) == ["x"]
    assert conformal.candidates(probs, list("abcde"), None) == ["b"]
    # the penalty keeps the tail out
    assert conformal.candidates(probs, list("abcde"), dict(spec, **{"lambda": 0.5, "k_reg": 1})) == ["b"]


def test_answer_kinds():
    assert conformal.answer_kind(["cat"], True) == "sure"
    assert conformal.answer_kind(["cat", "dog"], True) == "unsure"
    assert conformal.answer_kind(["cat", "dog", "deer", "horse"], True) == "unsure"
    assert conformal.answer_kind(["cat"], False) == "none"


def test_too_few_images_give_every_class_and_valid_json():
    probs, labels = synthetic(10)
    spec = conformal.fit_conformal(probs, labels, 0.95)
    json.dumps(spec, allow_nan=False)
    assert spec["held_out"]["mean_set_size"] == 10


def test_bad_settings_are_refused():
    probs, labels = synthetic(100)
    with pytest.raises(ValueError):
        conformal.fit_conformal(probs, labels, 1.5)
    with pytest.raises(ValueError):
        conformal.fit_conformal(probs, labels, 0.95, "lac")


# ---- through the card: ml.calibrate --sets-only, the Predictor, the export ----

@pytest.fixture(scope="module")
def calibrated_sets(tmp_path_factory, tiny_dataset):
    """A tiny model whose card names a 60-image validation split, given its sets by the command."""
    from conftest import make_model_dir
    from ml.calibrate import cli
    from ml.data.files import write_json_atomic
    from ml.nets.modelfile import CARD_FILE, read_card

    folder = make_model_dir(tmp_path_factory.mktemp("sets") / "model")
    before = dict(read_card(folder), data={"val_size": 60, "split_seed": 0}, temperature=0.5)
    write_json_atomic(folder / CARD_FILE, before)
    cli.main(["--model", str(folder), "--data", str(tiny_dataset), "--sets-only", "--no-suite", "--coverage", "0.9"])
    return folder, before


def test_sets_only_writes_the_calibration_into_the_card_and_nothing_else(calibrated_sets):
    from ml.nets.modelfile import load_model_dir
    folder, before = calibrated_sets
    _, card = load_model_dir(folder)  # the weights' digest still verifies
    sets = card.pop("conformal")
    assert card == before
    assert sets["method"] == "raps" and sets["coverage"] == 0.9 and sets["lambda"] == conformal.RAPS_LAMBDA
    assert sets["split"]["calibration_images"] == 30 and sets["held_out"]["images"] == 30
    assert 1 <= sets["held_out"]["mean_set_size"] <= 10 and 0 <= sets["held_out"]["coverage"] <= 1


def test_the_predictor_and_the_onnx_export_answer_with_the_cards_sets(calibrated_sets, tiny_dataset, tmp_path):
    from PIL import Image

    from examples import onnx_client
    from ml.export.formats import export_model, onnx_session
    from ml.nets.cardmodel import CardModel
    from ml.predict.predictor import Predictor
    folder, _ = calibrated_sets
    card_model = CardModel.load(folder)
    # the card's held-out figures are what its rule gives on the held-out half
    val = card_model.dataset(str(tiny_dataset)).val
    held = conformal.calibration_split(len(val.labels))[1]
    probs = card_model.outputs(val.images[held])[0].softmax(1)
    assert conformal.set_metrics(probs, val.labels[held], card_model.conformal) == card_model.conformal["held_out"]
    # photos that are not validation images: a calibration image's score is the threshold itself,
    # where float rounding in another runtime may tip it either way
    photos = []
    for seed in range(12):
        photos.append(tmp_path / f"{seed}.png")
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(photos[-1])
    site = Predictor(folder, "cpu").predict(photos)
    exported = export_model(folder, "onnx", tmp_path / "m.onnx")
    embedded = json.loads(onnx_session(exported, threads=1).get_modelmeta().custom_metadata_map["card"])
    assert embedded["conformal"]["threshold"] == card_model.conformal["threshold"]
    answers = onnx_client.classify(str(exported), [str(p) for p in photos])
    assert [a["candidates"] for a in answers] == [s["candidates"] for s in site]
    assert [a["answer"] for a in answers] == [s["answer"] for s in site]


def test_suite_sets_measure_coverage_and_refusals_per_severity(calibrated_sets, tiny_dataset, tmp_path):
    from ml.evaluate.suite import suite_sets
    from ml.nets.cardmodel import CardModel
    folder, _ = calibrated_sets
    card_model = CardModel.load(folder)
    found = suite_sets(card_model, card_model.dataset(str(tiny_dataset)).val, tmp_path / "cache",
                       variant_images=10, corruption_images=10)
    assert 0 <= found["variants"]["coverage"] <= 1 and 1 <= found["variants"]["mean_set_size"] <= 10
    assert [s["severity"] for s in found["corruptions"]["per_severity"]] == [1, 2, 3, 4, 5]
    assert found["variants"]["recognised"] is None  # the fixture's card has no novelty threshold
