"""ml.evaluate: the report on a hand-made case whose answers are known."""

import json
import subprocess
import sys

import pytest
import torch

from conftest import PROJECT_ROOT
from ml.evaluate.report import calibration, report_from_logits

CLASSES = ["a", "b", "c"]


def test_report_on_a_hand_made_confusion_case():
    # true labels: 4 x a, 2 x b, 2 x c; predictions: a a a b | b c | c c
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    logits = torch.full((8, 3), -10.0)
    logits[torch.arange(8), predicted] = 10.0
    report = report_from_logits(logits, labels, CLASSES, "validation")
    assert report["confusion_matrix"] == [[3, 1, 0], [0, 1, 1], [0, 0, 2]]
    assert report["accuracy"] == pytest.approx(6 / 8)
    assert report["per_class_accuracy"] == {"a": 0.75, "b": 0.5, "c": 1.0}
    assert report["images"] == 8 and report["split"] == "validation"
    # confident (p ~ 1) everywhere but right only 75% of the time: ECE ~ 0.25
    assert report["ece"] == pytest.approx(0.25, abs=1e-3)
    assert [(m["true"], m["predicted"]) for m in report["misclassified"]] in \
        ([("a", "b"), ("b", "c")], [("b", "c"), ("a", "b")])
    expected_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    assert report["loss"] == pytest.approx(expected_loss)
    json.dumps(report)  # serialisable


def test_calibration_of_a_perfectly_calibrated_set_is_zero():
    confidence = torch.tensor([0.7] * 10)
    correct = torch.tensor([True] * 7 + [False] * 3)
    ece, bins = calibration(confidence, correct)
    assert ece == pytest.approx(0.0, abs=1e-6)
    assert sum(b["count"] for b in bins) == 10


def test_evaluate_cli_prints_a_report(tmp_path, tiny_dataset):
    from conftest import make_model_dir
    model = make_model_dir(tmp_path / "m", arch="seednet")
    out = subprocess.run([sys.executable, "-m", "ml.evaluate", "--model", str(model), "--data",
                          str(tiny_dataset), "--val-size", "40", "--tta", "1", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True, check=True, cwd=PROJECT_ROOT)
    report = json.loads(out.stdout)
    assert report["images"] == 40 and report["tta"] == 1
    assert len(report["confusion_matrix"]) == 10
    assert json.loads((tmp_path / "r.json").read_text()) == report


def test_temperature_fixes_an_under_confident_model():
    from ml.calibrate.finish import fit_temperature
    torch.manual_seed(0)
    # labels drawn from softmax(logits): these logits are calibrated at T = 1 ...
    logits = torch.randn(4000, 10) * 3
    labels = torch.multinomial(logits.softmax(1), 1).flatten()
    squashed = logits / 4
    before = report_from_logits(squashed, labels, [str(i) for i in range(10)], "validation")
    temperature = fit_temperature(squashed, labels)
    after = report_from_logits(squashed / temperature, labels, [str(i) for i in range(10)], "validation")
    assert 0.2 < temperature < 0.3  # ... so squashed 4x, the fitted T is about 1/4
    assert after["ece"] < before["ece"] / 3 and after["ece"] < 0.05
    assert after["accuracy"] == before["accuracy"]


def test_evaluate_cli_adds_robustness_and_novelty_sections(tmp_path, tiny_dataset, monkeypatch, capsys):
    """`python -m ml.evaluate --robustness --novelty` (in process, so the suite can be made small) on
    an open-set model: the classes it left out are one of the unknown sets."""
    import functools

    import ml.evaluate.cli
    from ml.data.outliers import PROCEDURAL_SETS
    from ml.data.robustness import CORRUPTIONS, VARIANT_NAMES
    from ml.train.cli import build_parser, resolve_config
    from ml.train.loop import RunSettings, train
    known = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse"]
    config = resolve_config(build_parser().parse_args([
        "--data", str(tiny_dataset), "--val-size", "40", "--preset", "fast", "--widths", "8", "16", "16",
        "--epochs", "1", "--batch-size", "40", "--precision", "fp32", "--classes", *known]))
    card = train(config, tmp_path / "m", RunSettings(suite=False), emit=lambda record: None)
    monkeypatch.setattr(ml.evaluate.cli, "robustness_report", functools.partial(
        ml.evaluate.cli.robustness_report, variant_images=8, corruption_images=8))
    monkeypatch.setattr(ml.evaluate.cli, "far_out_sets", functools.partial(ml.evaluate.cli.far_out_sets, count=5))
    ml.evaluate.cli.main(["--model", str(tmp_path / "m"), "--data", str(tiny_dataset), "--robustness", "--novelty",
                      "--suite-precision", "fp32", "--out", str(tmp_path / "r.json")])
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "r.json").read_text())
    assert report["images"] == 32 and report["classes"] == known
    assert report["accuracy"] == pytest.approx(card["evaluation"]["accuracy"])
    robustness = report["robustness"]
    assert list(robustness["variants"]["per_variant"]) == VARIANT_NAMES and robustness["variants"]["images"] == 8
    assert set(robustness["corruptions"]["per_corruption"]) == set(CORRUPTIONS)
    novelty = report["novelty"]
    assert set(novelty["sets"]) == {"held-out classes", *PROCEDURAL_SETS}
    assert novelty["known_images"] == 32 and novelty["sets"]["held-out classes"]["images"] == 8
    for entry in novelty["sets"].values():
        # knn needs a training-feature bank, which an energy card does not store
        assert set(entry["auroc"]) == {"msp", "energy"} and 0 <= entry["refused"] <= 1
    # fp32 as in training: the threshold fitted there keeps its share of the same validation images
    assert novelty["known_recognised"] >= 0.95
