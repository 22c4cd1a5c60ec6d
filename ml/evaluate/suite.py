"""The robustness suite on fixed class-balanced subsets of the validation split: client variants
and common corruptions (ml/data/robustness.py makes them), run through a model's card."""

from dataclasses import dataclass

import torch

from ml.nets.conformal import set_metrics
from ml.data import robustness
from ml.data.sources import Split
from ml.evaluate.report import shift_report

SUITE_VARIANT_IMAGES = 500     # validation images behind the 13 client variants (6,500 inputs)
SUITE_CORRUPTION_IMAGES = 200  # validation images behind 12 corruptions x 5 severities (12,000)
SEVERITY_RANGE = range(1, robustness.SEVERITIES + 1)


@dataclass
class SuiteInputs:
    originals: Split          # the subset behind the client variants
    variants: torch.Tensor    # uint8 (variants, images, 3, 32, 32), in VARIANT_NAMES order
    corruption_labels: torch.Tensor
    corrupted: dict           # (corruption, severity) -> uint8 images, in CORRUPTIONS order


def suite_inputs(val: Split, cache_dir, variant_images=SUITE_VARIANT_IMAGES,
                 corruption_images=SUITE_CORRUPTION_IMAGES) -> SuiteInputs:
    """The suite's inputs: every client variant of one fixed subset (cached) and every corruption
    at every severity of another."""
    pick = robustness.suite_subset(val.labels, variant_images)
    originals = val.subset(pick)
    corrupt_pick = robustness.suite_subset(val.labels, corruption_images, seed=1)
    corrupted = {(name, s): robustness.corrupt(val.images[corrupt_pick], name, s)
                 for name in robustness.CORRUPTIONS for s in SEVERITY_RANGE}
    return SuiteInputs(originals, robustness.cached_client_variants(originals.images, cache_dir),
                       val.labels[corrupt_pick], corrupted)


def suite_splits(val: Split, cache_dir) -> list:
    """[(name, Split)] of the robustness suite's inputs, every variant and corruption in one
    set each, with their true labels (what the serving policy must hold on)."""
    suite = suite_inputs(val, cache_dir)
    variant_labels = suite.originals.labels.repeat(len(suite.variants))
    corruption_labels = suite.corruption_labels.repeat(len(suite.corrupted))
    return [("variants", Split(suite.variants.flatten(0, 1), variant_labels)),
            ("corruptions", Split(torch.cat(list(suite.corrupted.values())), corruption_labels))]


def recognised_share(card_model, logits, features):
    """The share the card's novelty threshold recognises (None for a card without one)."""
    if card_model.novelty_threshold is None:
        return None
    return (card_model.novelty(logits, features) <= card_model.novelty_threshold).float().mean().item()


def sets_share(card_model, logits, labels):
    """Coverage and mean size of the card's prediction sets on shifted inputs (None for a card
    without them); the histogram stays with the validation figures."""
    if not card_model.conformal:
        return None
    metrics = set_metrics(logits.softmax(1), labels, card_model.conformal)
    return {"coverage": metrics["coverage"], "mean_set_size": metrics["mean_set_size"]}


def variants_report(card_model, suite: SuiteInputs, amp_dtype=None) -> dict:
    """Agreement with the answer for the original image, accuracy and ECE on the client variants,
    over all of them and per variant."""
    labels = suite.originals.labels
    original = card_model.outputs(suite.originals.images, amp_dtype)[0].argmax(1)
    logits, features = card_model.outputs(suite.variants.flatten(0, 1), amp_dtype)
    count = len(suite.variants)
    everything = dict(shift_report(logits, labels.repeat(count), original.repeat(count)),
                      recognised=recognised_share(card_model, logits, features),
                      sets=sets_share(card_model, logits, labels.repeat(count)))
    logits = logits.view(count, len(labels), -1)
    per_variant = {name: shift_report(logits[i], labels, original)
                   for i, name in enumerate(robustness.VARIANT_NAMES)}
    return dict(everything, images=len(original), per_variant=per_variant)


def corruptions_report(card_model, suite: SuiteInputs, amp_dtype=None) -> dict:
    """Accuracy and ECE under every corruption, and the accuracy per corruption and severity."""
    labels = suite.corruption_labels
    outputs = {key: card_model.outputs(images, amp_dtype) for key, images in suite.corrupted.items()}
    corrupted = {key: logits for key, (logits, _) in outputs.items()}
    all_corrupted = torch.cat(list(corrupted.values()))
    recognised = recognised_share(card_model, all_corrupted, torch.cat([f for _, f in outputs.values()]))
    per_corruption = {name: [(corrupted[name, s].argmax(1) == labels).float().mean().item() for s in SEVERITY_RANGE]
                      for name in robustness.CORRUPTIONS}
    return dict(shift_report(all_corrupted, labels.repeat(len(corrupted))), images=len(labels),
                recognised=recognised, per_corruption=per_corruption,
                sets=sets_share(card_model, all_corrupted, labels.repeat(len(corrupted))))


def robustness_report(card_model, val: Split, cache_dir, amp_dtype=None, variant_images=SUITE_VARIANT_IMAGES,
                      corruption_images=SUITE_CORRUPTION_IMAGES) -> dict:
    """The robustness suite, its forward passes under autocast to `amp_dtype`: agreement with the
    original image and accuracy on client variants, accuracy on corruptions, and ECE."""
    suite = suite_inputs(val, cache_dir, variant_images, corruption_images)
    return {"precision": str(amp_dtype or "torch.float32"), "tta": card_model.tta,
            "variants": variants_report(card_model, suite, amp_dtype),
            "corruptions": corruptions_report(card_model, suite, amp_dtype)}


def suite_sets(card_model, val: Split, cache_dir, amp_dtype=None, variant_images=SUITE_VARIANT_IMAGES,
               corruption_images=SUITE_CORRUPTION_IMAGES) -> dict:
    """The card's prediction sets and refusals on the suite's inputs, without its other figures
    (`python -m ml.calibrate --sets-only` adds them to a card measured before the sets existed):
    coverage, mean set size and the recognised share on every client variant, and on the
    corruptions in all and per severity (the recognised shares alone for a card without sets)."""
    suite = suite_inputs(val, cache_dir, variant_images, corruption_images)
    labels = suite.originals.labels
    logits, features = card_model.outputs(suite.variants.flatten(0, 1), amp_dtype)
    variants = dict(sets_share(card_model, logits, labels.repeat(len(suite.variants))) or {},
                    recognised=recognised_share(card_model, logits, features))
    outputs = {key: card_model.outputs(images, amp_dtype) for key, images in suite.corrupted.items()}
    per_severity = []
    for severity in SEVERITY_RANGE:
        keys = [key for key in outputs if key[1] == severity]
        logits = torch.cat([outputs[key][0] for key in keys])
        features = torch.cat([outputs[key][1] for key in keys])
        per_severity.append(dict(sets_share(card_model, logits, labels_of(suite, len(keys))) or {}, severity=severity,
                                 recognised=recognised_share(card_model, logits, features)))
    logits = torch.cat([o[0] for o in outputs.values()])
    corruptions = dict(sets_share(card_model, logits, labels_of(suite, len(outputs))) or {},
                       recognised=recognised_share(card_model, logits, torch.cat([o[1] for o in outputs.values()])),
                       per_severity=per_severity)
    return {"variants": variants, "corruptions": corruptions}


def labels_of(suite: SuiteInputs, sets: int) -> torch.Tensor:
    """The corruption subset's labels for `sets` corrupted copies of it, in order."""
    return suite.corruption_labels.repeat(sets)
