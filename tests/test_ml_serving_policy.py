"""The serving policy: precision chosen per device behind an agreement gate, the adaptive TTA
policy, and the card section `ml.evaluate --serving-policy --write-card` writes."""

import json
import logging
import shutil

import pytest
import torch
from torch import nn

from ml.evaluate import serving_policy
from ml.data.batches import normalize
from ml.data.sources import Split
from ml.nets.models import combine_views, extra_views, tta_outputs
from ml.predict.predictor import Predictor
from ml.evaluate.serving_policy import agreement_gate, choose_tta, policy_logits, view_logits
from ml.nets.cardmodel import serving_precision, serving_tta
from ml.nets.device import precision_candidates

CUDA = torch.device("cuda")  # a device object only: nothing runs on it
CPU = torch.device("cpu")


class CountingNet(nn.Module):
    """A linear classifier whose confidence grows with the input's brightness; it records the
    rows of every forward pass, so a test can see which images paid for extra views."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Linear(3 * 32 * 32, 12)
        self.head = nn.Linear(12, 10)
        self.rows = []

    def penultimate(self, x):
        self.rows.append(len(x))
        return self.features(x.flatten(1))

    def classify(self, features):
        return self.head(features)

    def forward(self, x):
        return self.classify(self.penultimate(x))


def gate_entry(passed, dtype="bf16"):
    return {"dtype": dtype, "passed": passed, "why": None if passed else "top-1 agreement 97.00% < 99.5%"}


# ---- precision per device ----

def test_cuda_prefers_bf16_where_the_gpu_has_it_and_falls_back_to_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision_candidates(CUDA) == ["bf16", "fp16"]
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision_candidates(CUDA) == ["fp16"]


def test_cpus_without_bf16_and_other_devices_have_only_fp32(monkeypatch):
    assert precision_candidates(torch.device("mps")) == []
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert precision_candidates(CPU) == []
    assert serving_precision({"serving": {"precision": {"cpu": gate_entry(True)}}}, CPU) == (None, None)


def test_a_passed_gate_on_this_kind_of_device_serves_its_dtype(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    card = {"serving": {"precision": {"cuda": gate_entry(True), "cpu": gate_entry(False)}}}
    assert serving_precision(card, CUDA) == (torch.bfloat16, None)
    fp16 = {"serving": {"precision": {"cuda": gate_entry(True, "fp16")}}}
    assert serving_precision(fp16, CUDA) == (torch.float16, None)


def test_fp32_with_a_reason_when_the_gate_failed_was_not_measured_or_the_dtype_is_missing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    dtype, why = serving_precision({"serving": {"precision": {"cuda": gate_entry(False, "fp16")}}}, CUDA)
    assert dtype is None and "failed the agreement gate" in why and "97.00%" in why
    dtype, why = serving_precision({"serving": {"precision": {"cpu": gate_entry(True)}}}, CUDA)
    assert dtype is None and "no precision gate measured on cuda" in why
    dtype, why = serving_precision({"serving": {"precision": {"cuda": gate_entry(True, "bf16")}}}, CUDA)
    assert dtype is None and "lacks it" in why


def test_the_gate_refuses_answers_that_differ_from_fp32():
    torch.manual_seed(0)
    reference = torch.randn(1000, 10) * 4
    labels = reference.argmax(1)
    same = agreement_gate(reference, reference + 0.01 * torch.randn(1000, 10), labels)
    assert same["passed"] and same["why"] is None and same["agreement"] > 0.99
    differing = reference.clone()
    differing[:20] = differing[:20].roll(1, dims=1)  # 2% of the answers change
    refused = agreement_gate(reference, differing, labels)
    assert not refused["passed"] and refused["agreement"] == pytest.approx(0.98)
    assert "agreement" in refused["why"] and "accuracy" in refused["why"]


def test_a_predictor_whose_gate_failed_serves_fp32_and_logs_why(tmp_path, tiny_model_dir, caplog):
    if not precision_candidates(CPU):
        pytest.skip("this CPU has no bf16: fp32 is the only choice and nothing is logged")
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    card = json.loads((model_dir / "card.json").read_text())
    (model_dir / "card.json").write_text(json.dumps(dict(card, serving={"precision": {"cpu": gate_entry(False)}})))
    with caplog.at_level(logging.WARNING, logger="ml.predict"):
        predictor = Predictor(model_dir, device="cpu")
    assert predictor.amp_dtype is None
    assert "failed the agreement gate" in caplog.text and str(model_dir) in caplog.text
    (model_dir / "card.json").write_text(json.dumps(dict(card, serving={"precision": {"cpu": gate_entry(True)}})))
    assert Predictor(model_dir, device="cpu").amp_dtype == torch.bfloat16


# ---- TTA policy ----

def brightness_batch():
    """Four dim images (unsure) and four bright ones (confident) for CountingNet."""
    torch.manual_seed(1)
    x = torch.randn(8, 3, 32, 32) * 0.01
    x[4:] = torch.randn(4, 3, 32, 32) * 30
    return x


def test_adaptive_tta_runs_the_extra_views_only_below_its_threshold():
    model, x = CountingNet().eval(), brightness_batch()
    with torch.no_grad():
        plain = model(x)
        confidence = plain.softmax(1).amax(1)
        threshold = float(confidence.sort().values[3:5].mean())  # between the 4th and 5th image
        unsure = confidence < threshold
        assert unsure.sum() == 4
        full, _ = tta_outputs(model, x, 2)
        model.rows.clear()
        logits, features = tta_outputs(model, x, 2, confident_at=threshold)
    assert model.rows == [8, 4 * 5]  # the plain pass for all, then the 4 unsure ones five views each, stacked
    assert torch.equal(logits[~unsure], plain[~unsure])
    assert torch.allclose(logits[unsure], full[unsure], atol=1e-6)
    assert features.shape == (8, 12)


def test_adaptive_tta_with_every_image_confident_makes_one_pass():
    model, x = CountingNet().eval(), brightness_batch()
    with torch.no_grad():
        logits, _ = tta_outputs(model, x, 2, confident_at=0.0)
        assert model.rows == [8] and torch.equal(logits, model(x))


def test_policies_from_stored_views_equal_the_served_computation():
    model, x = CountingNet().eval(), brightness_batch()
    images = (x.clamp(-1, 1) * 127 + 128).to(torch.uint8)
    split = Split(images, torch.zeros(8, dtype=torch.int64))
    views = view_logits(model, split, CPU, norm=((0.5,) * 3, (0.25,) * 3))
    assert views.shape == (6, 8, 10)
    xn = normalize(images, (0.5,) * 3, (0.25,) * 3)
    with torch.no_grad():
        for level in (0, 1, 2):
            assert torch.allclose(policy_logits(views, level)[0], tta_outputs(model, xn, level)[0], atol=1e-5)
        confident_at = float(views[0].softmax(1).amax(1).median())
        adaptive, passes = policy_logits(views, 2, confident_at)
        assert torch.allclose(adaptive, tta_outputs(model, xn, 2, confident_at)[0], atol=1e-5)
        assert passes == pytest.approx(1 + 5 * (views[0].softmax(1).amax(1) < confident_at).float().mean())
        assert torch.allclose(combine_views([model(xn), *extra_views(model, xn, 1)], 1), policy_logits(views, 1)[0],
                              atol=1e-5)


def test_the_cheapest_policy_within_tolerance_of_full_tta_is_chosen():
    rows = [{"level": 0, "confident_at": None, "passes": 1, "accuracy": 0.900, "variants": 0.85},
            {"level": 2, "confident_at": None, "passes": 6, "accuracy": 0.920, "variants": 0.880},
            {"level": 2, "confident_at": 0.9, "passes": 1.6, "accuracy": 0.9195, "variants": 0.870},
            {"level": 2, "confident_at": 0.98, "passes": 2.1, "accuracy": 0.9192, "variants": 0.8795}]
    assert choose_tta(rows)["confident_at"] == 0.9  # validation only
    assert choose_tta(rows, ["variants"])["confident_at"] == 0.98  # 0.9 loses a point on variants


def test_serving_tta_reads_the_policy_or_falls_back_to_the_trained_level():
    assert serving_tta({"tta": 2}) == (2, None)
    assert serving_tta({"tta": 2, "serving": {"tta": {"level": 2, "confident_at": 0.9}}}) == (2, 0.9)


# ---- measured into the card ----

def test_evaluate_measures_the_policy_and_writes_it_into_the_card(tmp_path, tiny_model_dir, tiny_dataset,
                                                                  monkeypatch, capsys):
    import ml.evaluate.cli
    monkeypatch.setattr(serving_policy, "SPEED_SECONDS", 0.05)
    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "m")
    before = json.loads((model_dir / "card.json").read_text())
    before["serving"] = {"precision": {"cuda": gate_entry(True)}}  # measured elsewhere: kept
    (model_dir / "card.json").write_text(json.dumps(before))
    ml.evaluate.cli.main(["--model", str(model_dir), "--data", str(tiny_dataset), "--val-size", "40",
                      "--serving-policy", "--write-card"])
    section = json.loads(capsys.readouterr().out)["serving"]
    card = json.loads((model_dir / "card.json").read_text())
    assert card["serving"]["tta"] == section["tta"] and card["serving"]["precision"]["cuda"] == gate_entry(True)
    table = section["tta"]["table"]
    assert [(r["level"], r["confident_at"]) for r in table[:3]] == [(0, None), (1, None), (2, None)]
    assert [r["passes"] for r in table[:3]] == [1, 2, 6] and all(1 <= r["passes"] <= 6 for r in table)
    chosen = section["tta"]
    assert chosen["passes"] == min(r["passes"] for r in table
                                   if r["accuracy"] >= table[2]["accuracy"] - serving_policy.TTA_TOLERANCE)
    if precision_candidates(CPU):
        assert card["serving"]["precision"]["cpu"]["dtype"] == "bf16"
        assert set(card["serving"]["precision"]["cpu"]) >= {"agreement", "accuracy", "ece", "passed"}
    assert section["images_per_s"]["fp32, full TTA"] > 0
    Predictor(model_dir, device="cpu").predict_arrays([torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()])
