"""Far-out sets and the novelty score's separation: how well each method tells images that are
none of the classes (ml/data/outliers.py, or an open-set model's held-out classes) from the
validation images."""

from pathlib import Path

from ml.data import outliers
from ml.data.sources import Split
from ml.nets.novelty import METHODS, auroc

FAR_OUT_IMAGES = 300           # per procedural far-out set


def far_out_sets(package_photos=None, count=FAR_OUT_IMAGES) -> dict:
    """{set name: uint8 images} of things that are none of the ten classes."""
    sets = {name: outliers.procedural_set(name, count) for name in outliers.PROCEDURAL_SETS}
    if package_photos:
        for group in ("photos", "digits"):
            folder = Path(package_photos) / group
            if folder.is_dir():
                sets[f"package {group}"] = outliers.photo_crops(folder, 12 if group == "photos" else 0)
    return sets


def novelty_scores_by_method(card_model, images, amp_dtype=None) -> dict:
    """{method: novelty scores} for the images (knn only with a training-feature bank; energy at the
    card's temperature)."""
    logits, features = card_model.outputs(images, amp_dtype)
    return {m: card_model.novelty(logits, features, m) for m in METHODS
            if m != "knn" or card_model.novelty_bank is not None}


def novelty_report(card_model, known: Split, unknown_sets: dict, amp_dtype=None) -> dict:
    """AUROC of every novelty method at telling each set of `unknown_sets` from the `known`
    images; with the card's threshold, the share of each set its method refuses."""
    threshold, method = card_model.novelty_threshold, card_model.novelty_method
    known_scores = novelty_scores_by_method(card_model, known.images, amp_dtype)
    report = {"known_images": len(known), "sets": {}}
    for name, images in unknown_sets.items():
        scores = novelty_scores_by_method(card_model, images, amp_dtype)
        entry = {"images": len(images), "auroc": {m: auroc(known_scores[m], scores[m]) for m in scores}}
        if threshold is not None:
            entry["refused"] = (scores[method] > threshold).float().mean().item()
        report["sets"][name] = entry
    if threshold is not None:
        report["known_recognised"] = (known_scores[method] <= threshold).float().mean().item()
    return report
