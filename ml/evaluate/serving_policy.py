"""How a model is served: its precision and the test-time-augmentation policy, both
chosen by measurement and written into the card's `serving` section (`python -m ml.evaluate
--serving-policy --write-card`; `ml.train` does it for every new model).

Precision: the fastest dtype of the device (bf16 on CPUs with AVX512-BF16/AMX, bf16 or fp16 on
CUDA; weights cast once, see `cast_for_serving`) serves only if, under the chosen TTA policy, its
answers pass GATE against fp32 on the validation split, measured on that kind of device. A model
without a passing entry for the device serves in fp32, and the Predictor logs why.

TTA: every image gets the plain pass; level 1 adds the mirror, level 2 the one-pixel translations
too (six passes). The adaptive policy runs the extra passes only for images whose calibrated top
probability after the plain pass is below a threshold (the trick behind the 2025 CIFAR-10 speed
record): most photos are confident and cost one pass. The default is the cheapest policy within
TTA_TOLERANCE of full TTA's accuracy, on the validation split and on the robustness suite.
"""

import copy
import time

import torch

from ml.data.sources import Split, iterate_batches, normalize
from ml.nets.models import TTA_VIEWS, combine_views, extra_views, tta_outputs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GATE = {"min_agreement": 0.995, "max_accuracy_drop": 0.001, "max_ece_rise": 0.003}
TTA_TOLERANCE = 0.001  # accuracy a cheaper policy may lose against full TTA (0.1 point)
ADAPTIVE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99)
SPEED_BATCH = 16        # images per forward pass when timing (the server's micro-batches)
SPEED_SECONDS = 3.0     # per configuration timed


def precision_candidates(device: torch.device) -> list:
    """Autocast dtypes worth trying on this device, fastest first (none: fp32 only)."""
    if device.type == "cuda":
        return ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and \
            torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return ["bf16"]
    return []


def serving_precision(card: dict, device: torch.device):
    """(serving dtype or None for fp32, why fp32 when a faster dtype was possible or None)."""
    candidates = precision_candidates(device)
    if not candidates:
        return None, None
    entry = (card.get("serving") or {}).get("precision", {}).get(device.type)
    if entry is None:
        return None, (f"no precision gate measured on {device.type} for this model: serving fp32 "
                      "(python -m ml.evaluate --serving-policy --write-card measures it)")
    if not entry["passed"]:
        return None, f"{entry['dtype']} failed the agreement gate against fp32 ({entry['why']}): serving fp32"
    if entry["dtype"] not in candidates:
        return None, f"{entry['dtype']} passed the gate but this {device.type} lacks it: serving fp32"
    return DTYPES[entry["dtype"]], None


def cast_for_serving(model, dtype):
    """`model` for inference in `dtype` (None: itself, fp32): a copy with its weights cast once,
    inputs cast by the caller, no autocast. Autocast casts every weight at every call, which
    dominates the small batches a server runs (bf16, one core: one photo 10.8 ms against 16.9 ms
    under autocast, four photos 18.5 against 20.4; same answers on 1,000 validation images)."""
    return model if dtype is None else copy.deepcopy(model).to(dtype).eval()


def serving_tta(card: dict) -> tuple:
    """(TTA level, adaptive confidence threshold or None) the card's policy serves with."""
    policy = (card.get("serving") or {}).get("tta") or {}
    return policy.get("level", card.get("tta", 0)), policy.get("confident_at")


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


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    confidence, predicted = logits.softmax(1).max(1)
    correct = (predicted == labels).float()
    which = (confidence * bins).ceil().clamp(1, bins).long() - 1
    gaps = torch.zeros(bins).index_add_(0, which, confidence - correct)
    return (gaps.abs().sum() / len(labels)).item()


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


def images_per_second(model, images: torch.Tensor, device, norm, amp_dtype, level, confident_at,
                      temperature, seconds: float = SPEED_SECONDS) -> float:
    """In-process forward-pass throughput (normalisation included) at SPEED_BATCH per pass."""
    model = cast_for_serving(model, amp_dtype)
    done, start, i = 0, time.perf_counter(), 0
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            batch = images[i % len(images):i % len(images) + SPEED_BATCH]
            x = normalize(batch.to(device), *norm).to(amp_dtype or torch.float32)
            tta_outputs(model, x, level, confident_at, temperature)
            done, i = done + len(batch), i + SPEED_BATCH
    return done / (time.perf_counter() - start)


def measure(model, card: dict, device: torch.device, val: Split, suite=(), speed: bool = True) -> dict:
    """The card's `serving` section for `device`: the TTA table and chosen policy, the precision
    gate of the fastest dtype that passes it (or of the first, failed), and (`speed`) forward-pass
    speeds. `suite`: (name, Split) sets of the robustness suite the policy must hold on."""
    norm = (card["normalization"]["mean"], card["normalization"]["std"])
    temperature = card.get("temperature", 1.0)
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
    entry = None
    for name in candidates:
        candidate = policy_logits(view_logits(model, val, device, norm, DTYPES[name]), *policy, temperature)[0]
        gate = agreement_gate(policy_logits(reference, *policy, temperature)[0], candidate, val.labels)
        if entry is None or gate["passed"]:
            entry = dict(gate, dtype=name)
        if gate["passed"]:
            break
    section["precision"] = {device.type: entry} if entry else {}
    if not speed:
        return section
    served = DTYPES[entry["dtype"]] if entry and entry["passed"] else None
    images = val.images[:512]
    section["images_per_s"] = {
        "fp32, full TTA": images_per_second(model, images, device, norm, None, 2, None, temperature),
        "served precision, full TTA": images_per_second(model, images, device, norm, served, 2, None, temperature),
        "served precision and policy": images_per_second(model, images, device, norm, served, *policy, temperature),
        "device": device.type, "batch": SPEED_BATCH,
    }
    return section


def merged(card: dict, section: dict) -> dict:
    """The card with `section` as its serving policy, keeping gates measured on other devices."""
    old = card.get("serving") or {}
    precision = {**old.get("precision", {}), **section["precision"]}
    return dict(card, serving=dict(section, precision=precision))
