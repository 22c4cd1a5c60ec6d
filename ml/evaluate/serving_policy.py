"""How a model is served: its precision and the test-time-augmentation policy, both
chosen by measurement and written into the card's `serving` section (`python -m ml.evaluate
--serving-policy --write-card`; `ml.train` does it for every new model).

Precision: the fastest dtype of the device (bf16 on CPUs with AVX512-BF16/AMX, bf16 or fp16 on
CUDA; weights cast once: ml/nets/device.py) serves only if, under the chosen TTA policy, its
answers pass GATE against fp32 on the validation split, measured on that kind of device. A model
without a passing entry for the device serves in fp32, and the Predictor logs why.

TTA: every image gets the plain pass; level 1 adds the mirror, level 2 the one-pixel translations
too (six passes). The adaptive policy runs the extra passes only for images whose calibrated top
probability after the plain pass is below a threshold (the trick behind the 2025 CIFAR-10 speed
record): most photos are confident and cost one pass. The default is the cheapest policy within
TTA_TOLERANCE of full TTA's accuracy, on the validation split and on the robustness suite.
"""

import time

import torch

from ml.data.batches import iterate_batches, normalize
from ml.data.sources import Split
from ml.evaluate.report import expected_calibration_error
from ml.evaluate.suite import suite_splits
from ml.nets.device import DTYPES, cast_for_serving, precision_candidates
from ml.nets.models import TTA_VIEWS, combine_views, extra_views, tta_outputs

GATE = {"min_agreement": 0.995, "max_accuracy_drop": 0.001, "max_ece_rise": 0.003}
TTA_TOLERANCE = 0.001  # accuracy a cheaper policy may lose against full TTA (0.1 point)
ADAPTIVE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SPEED_BATCH = 16        # images per forward pass when timing (the server's micro-batches)
SPEED_SECONDS = 3.0     # per configuration timed


@torch.no_grad()
def view_logits(model, split: Split, device, norm, amp_dtype=None, batch_size=500) -> torch.Tensor:
    """(6, N, classes) float32 logits of every level-2 view of every image (plain view first)."""
    model = cast_for_serving(model.eval(), amp_dtype)  # as the Predictor serves it
    out = []
    for images, _ in iterate_batches(split, batch_size):
        x = normalize(images.to(device), *norm).to(amp_dtype or torch.float32)
        views = [model(x), *extra_views(model, x, 2)]
        out.append(torch.stack([v.float().cpu() for v in views]))
    return torch.cat(out, dim=1)


def policy_logits(views: torch.Tensor, level: int, confident_at=None, temperature: float = 1.0):
    """(calibrated logits under a policy, forward passes per image) from `view_logits`."""
    full = combine_views(list(views[:TTA_VIEWS[level]]), level) / temperature
    if level == 0 or confident_at is None:
        return full, float(TTA_VIEWS[level])
    plain = views[0] / temperature
    unsure = plain.softmax(1).amax(1) < confident_at
    passes = 1 + unsure.float().mean().item() * (TTA_VIEWS[level] - 1)
    return torch.where(unsure[:, None], full, plain), passes


def agreement_gate(reference: torch.Tensor, candidate: torch.Tensor, labels: torch.Tensor) -> dict:
    """GATE for `candidate` logits against the fp32 `reference` logits of the same images."""
    accuracy = {name: (logits.argmax(1) == labels).float().mean().item()
                for name, logits in (("fp32", reference), ("candidate", candidate))}
    ece = {name: expected_calibration_error(logits, labels)
           for name, logits in (("fp32", reference), ("candidate", candidate))}
    agreement = (reference.argmax(1) == candidate.argmax(1)).float().mean().item()
    failures = []
    if agreement < GATE["min_agreement"]:
        failures.append(f"top-1 agreement {agreement:.2%} < {GATE['min_agreement']:.1%}")
    if accuracy["fp32"] - accuracy["candidate"] > GATE["max_accuracy_drop"]:
        failures.append(f"accuracy {accuracy['candidate']:.2%} against fp32's {accuracy['fp32']:.2%}")
    if ece["candidate"] - ece["fp32"] > GATE["max_ece_rise"]:
        failures.append(f"ECE {ece['candidate']:.2%} against fp32's {ece['fp32']:.2%}")
    return {"agreement": agreement, "accuracy": accuracy["candidate"], "accuracy_fp32": accuracy["fp32"],
            "ece": ece["candidate"], "ece_fp32": ece["fp32"], "passed": not failures,
            "why": "; ".join(failures) or None}


def tta_table(views: torch.Tensor, labels: torch.Tensor, temperature: float, suite=()) -> list:
    """One row per policy: passes per image, accuracy and ECE on validation, accuracy on each
    (name, views, labels) set of the robustness suite."""
    policies = [(level, None) for level in (0, 1, 2)] + [(2, t) for t in ADAPTIVE_THRESHOLDS]
    rows = []
    for level, confident_at in policies:
        logits, passes = policy_logits(views, level, confident_at, temperature)
        row = {"level": level, "confident_at": confident_at, "passes": passes,
               "accuracy": (logits.argmax(1) == labels).float().mean().item(),
               "ece": expected_calibration_error(logits, labels)}
        for name, suite_views, suite_labels in suite:
            suite_logits, _ = policy_logits(suite_views, level, confident_at, temperature)
            row[name] = (suite_logits.argmax(1) == suite_labels).float().mean().item()
        rows.append(row)
    return rows


def choose_tta(rows: list, suite_names=()) -> dict:
    """The cheapest policy within TTA_TOLERANCE of full TTA (level 2, every image) on validation
    and on every suite set."""
    full = next(r for r in rows if r["level"] == 2 and r["confident_at"] is None)
    keys = ("accuracy", *suite_names)
    good = [r for r in rows if all(r[k] >= full[k] - TTA_TOLERANCE for k in keys)]
    return min(good, key=lambda r: (r["passes"], -r["accuracy"]))


def images_per_second(card_model, images: torch.Tensor, amp_dtype, policy: tuple) -> float:
    """In-process forward-pass throughput (normalisation included) at SPEED_BATCH per pass, for
    SPEED_SECONDS, in `amp_dtype` (None: fp32) under the TTA `policy` (level, confident_at)."""
    model = cast_for_serving(card_model.model, amp_dtype)
    done, start, i = 0, time.perf_counter(), 0
    with torch.inference_mode():
        while time.perf_counter() - start < SPEED_SECONDS:
            batch = images[i % len(images):i % len(images) + SPEED_BATCH]
            x = normalize(batch.to(card_model.device), *card_model.norm).to(amp_dtype or torch.float32)
            tta_outputs(model, x, *policy, card_model.temperature)
            done, i = done + len(batch), i + SPEED_BATCH
    return done / (time.perf_counter() - start)


def precision_gate(card_model, val: Split, reference: torch.Tensor, policy: tuple):
    """The gate entry of the fastest dtype of the device that passes the agreement gate under
    `policy`, or of the first when none does; None where the device has only fp32."""
    entry = None
    expected = policy_logits(reference, *policy, card_model.temperature)[0]
    for name in precision_candidates(card_model.device):
        views = view_logits(card_model.model, val, card_model.device, card_model.norm, DTYPES[name])
        gate = agreement_gate(expected, policy_logits(views, *policy, card_model.temperature)[0], val.labels)
        if entry is None or gate["passed"]:
            entry = dict(gate, dtype=name)
        if gate["passed"]:
            break
    return entry


def measure(card_model, val: Split, suite=(), speed: bool = True) -> dict:
    """The card's `serving` section for the model's device: the TTA table and chosen policy, the
    precision gate of the fastest dtype that passes it (or of the first, failed), and (`speed`)
    forward-pass speeds. `suite`: (name, Split) sets of the robustness suite the policy must hold on."""
    model, device, norm, temperature = card_model.model, card_model.device, card_model.norm, card_model.temperature
    candidates = precision_candidates(device)
    fast_dtype = DTYPES[candidates[0]] if candidates else None  # the suite only compares policies
    suite_views = [(name, view_logits(model, split, device, norm, fast_dtype), split.labels)
                   for name, split in suite]
    reference = view_logits(model, val, device, norm)
    rows = tta_table(reference, val.labels, temperature, suite_views)
    chosen = choose_tta(rows, [name for name, _ in suite])
    policy = (chosen["level"], chosen["confident_at"])
    section = {"tta": {"level": policy[0], "confident_at": policy[1], "passes": chosen["passes"],
                       "tolerance": TTA_TOLERANCE, "table": rows}}
    entry = precision_gate(card_model, val, reference, policy)
    section["precision"] = {device.type: entry} if entry else {}
    if not speed:
        return section
    served = DTYPES[entry["dtype"]] if entry and entry["passed"] else None
    images = val.images[:512]
    section["images_per_s"] = {
        "fp32, full TTA": images_per_second(card_model, images, None, (2, None)),
        "served precision, full TTA": images_per_second(card_model, images, served, (2, None)),
        "served precision and policy": images_per_second(card_model, images, served, policy),
        "device": device.type, "batch": SPEED_BATCH,
    }
    return section


def serving_section(card_model, val: Split, cache_dir, speed: bool = True) -> dict:
    """The serving policy (precision gate, TTA policy, and with `speed` forward-pass speeds)
    measured on the model's device; the TTA policy must also hold on the robustness suite when the
    card has its figures."""
    suite = suite_splits(val, cache_dir) if card_model.card.get("robustness") else ()
    return measure(card_model, val, suite, speed)


def merged(card: dict, section: dict) -> dict:
    """The card with `section` as its serving policy, keeping gates measured on other devices."""
    old = card.get("serving") or {}
    precision = {**old.get("precision", {}), **section["precision"]}
    return dict(card, serving=dict(section, precision=precision))
