"""The dashboard's page sections, built from a model card: one builder per section, each
returning what its part of templates/dashboard/index.html shows (None when the card lacks that part).
Nothing here reads weights; gallery images are found in the model folder's gallery/.
"""

import logging
import re
from collections import namedtuple
from pathlib import Path

from flask import url_for

from ml.nets.novelty import energy_temperature
from webapp.core.formatting import duration, finite, num
from webapp.dashboard import charts
from webapp.dashboard.charts import Chart

log = logging.getLogger(__name__)

ModelVersion = namedtuple("ModelVersion", "id label path active")
GALLERY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TTA_LEVELS = {0: "none", 1: "mirror image averaged in", 2: "mirror image and one-pixel shifts averaged in"}
NOVELTY_METHODS = {  # ml/nets/novelty.py's scores, in words
    "msp": "maximum softmax probability (minus the top class's calibrated probability)",
    "energy": "energy score (minus the log-sum-exp of the calibrated logits, at the temperature shown)",
    "knn": "feature distance to the k-th nearest training image (normalised penultimate features)",
}
# A card part in a shape the page cannot read is reported as missing, not as a server error.
MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)


def gallery_file(model_path, name: str):
    """The path of gallery/<name>.png inside the model folder when `name` is a plain file name and
    the file is a PNG there (symlinks out of the folder refused); otherwise None."""
    if not GALLERY_NAME.fullmatch(name or ""):
        return None
    folder = (Path(model_path) / "gallery").resolve()
    path = (folder / f"{name}.png").resolve()
    if path.parent != folder or not path.is_file():
        return None
    with open(path, "rb") as f:
        return path if f.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE else None


def dashboard_view(card: dict, model: ModelVersion) -> dict:
    """Everything the page shows, one entry per section; None for a part the card lacks."""
    builders = {"identity": identity, "summary": summary, "user_photos": user_photos, "robustness": robustness,
                "sets": prediction_sets, "novelty": novelty, "per_class": per_class, "confusion": confusion,
                "history": history, "calibration": calibration, "misclassified": misclassified,
                "dataset": dataset, "samples": samples, "facts": facts, "hyperparameters": hyperparameters}
    return {name: _section(name, builder, card, model) for name, builder in builders.items()}


def _section(name, builder, card, model):
    try:
        return builder(card, model)
    except MALFORMED as error:
        log.warning("dashboard: %s section of %s unreadable (%r)", name, model.id, error)
        return None


# -- sections -----------------------------------------------------------------------------------

def identity(card, model):
    return {"name": str(card.get("name") or model.id), "version": str(card.get("version") or model.id)}


def summary(card, model):
    report = card["evaluation"]
    tta = report.get("tta", card.get("tta"))
    return {"accuracy": float(report["accuracy"]), "loss": report.get("loss"), "ece": report.get("ece"),
            "split": str(report.get("split") or "validation"), "images": report.get("images"),
            "tta": tta, "tta_text": TTA_LEVELS.get(tta, "")}


def user_photos(card, model):
    """How the version did on the evaluation part of reviewed user feedback when it was trained
    (webapp.lifecycle.gate.record_feedback), and how many feedback photos it trained on."""
    section = card.get("feedback")
    if section is None:
        return None
    measure = section.get("eval") or {}
    return {"trained_on": int(section.get("trained_on") or 0), "images": measure.get("images"),
            "known_images": measure.get("known_images"), "accuracy": finite(measure.get("accuracy")),
            "not_recognised_rate": finite(measure.get("not_recognised_rate")),
            "none_caught_rate": finite(measure.get("none_caught_rate"))}


def robustness(card, model):
    """The robustness suite (ml.evaluate): client-sent variants and common corruptions. None for a
    card from before the suite existed."""
    report = card.get("robustness")
    if not report:
        return None
    variants, corruptions = report.get("variants"), report.get("corruptions")
    return {"clean_accuracy": (card.get("evaluation") or {}).get("accuracy"), "tta": report.get("tta"),
            "precision": report.get("precision"),
            "variants": _variants(variants) if variants else None,
            "corruptions": _corruptions(corruptions) if corruptions else None}


def _suite_totals(part: dict) -> dict:
    return {key: part.get(key) for key in ("inputs", "images", "accuracy", "ece", "mean_confidence", "agreement")}


def _variants(variants: dict) -> dict:
    rows = [{"name": str(name), **_suite_totals(figures)}
            for name, figures in (variants.get("per_variant") or {}).items()]
    return {**_suite_totals(variants), "rows": rows}


def _corruptions(corruptions: dict) -> dict:
    per_corruption = corruptions.get("per_corruption") or {}
    rows = [{"name": str(name), "by_severity": list(accuracies), "mean": _mean(accuracies)}
            for name, accuracies in per_corruption.items()]
    severities = max((len(row["by_severity"]) for row in rows), default=0)
    return {**_suite_totals(corruptions), "rows": rows, "severities": list(range(1, severities + 1))}


def _mean(values):
    values = [float(v) for v in values if finite(v) is not None]
    return sum(values) / len(values) if values else None


def prediction_sets(card, model):
    """The conformal prediction sets (ml/nets/conformal.py): the stated coverage and what was
    measured on the held-out half of validation and, when the suite measured them, on client
    variants and corruptions. None for a card from before them."""
    spec = card.get("conformal")
    if not spec:
        return None
    held = spec.get("held_out") or {}
    shifted = {}
    for part in ("variants", "corruptions"):
        figures = ((card.get("robustness") or {}).get(part) or {}).get("sets")
        shifted[part] = {"coverage": finite(figures.get("coverage")),
                         "mean_set_size": finite(figures.get("mean_set_size"))} if figures else None
    return {"method": str(spec["method"]), "coverage": finite(spec.get("coverage")),
            "images": held.get("images"), "measured": finite(held.get("coverage")),
            "mean_set_size": finite(held.get("mean_set_size")), **shifted}


def novelty(card, model):
    """The "none of these" score (ml/nets/novelty.py): its method, fitted threshold and how well it
    tells far-out and held-out-class images from validation images. None for an older card."""
    spec = card.get("novelty")
    if not spec:
        return None
    method = str(spec["method"])
    far_out, open_set = spec.get("far_out"), spec.get("open_set")
    return {"method": method, "method_text": NOVELTY_METHODS.get(method, ""), "threshold": spec.get("threshold"),
            "keep_share": spec.get("keep_share"), "fitted_on": spec.get("fitted_on"), "k": spec.get("k"),
            "bank_images": spec.get("bank_images"), "energy_temperature": energy_temperature(spec),
            "far_out": _detection(far_out, method) if far_out else None,
            "open_set": _detection(open_set, method) if open_set else None}


def _detection(report: dict, method: str) -> dict:
    """Per set of unknown images: AUROC of every method measured (the chosen one first) and the
    share refused at the threshold; with the share of known (validation) images recognised."""
    sets = report.get("sets") or {}
    methods = [method] + sorted({m for figures in sets.values() for m in figures.get("auroc") or {}} - {method})
    rows = [{"name": str(name), "images": figures.get("images"), "refused": figures.get("refused"),
             "auroc": [(figures.get("auroc") or {}).get(m) for m in methods]} for name, figures in sets.items()]
    return {"known_images": report.get("known_images"), "known_recognised": report.get("known_recognised"),
            "methods": methods, "rows": rows, "mean_auroc": _mean([row["auroc"][0] for row in rows]),
            "min_auroc": min((a for a in (row["auroc"][0] for row in rows) if finite(a) is not None), default=None)}


def per_class(card, model):
    accuracy = card["evaluation"]["per_class_accuracy"]
    counts = (card.get("data") or {}).get("eval_per_class") or {}
    classes = [c for c in card["classes"] if c in accuracy]
    if not classes:
        return None
    chart = charts.bar_chart(classes, [("Accuracy", [accuracy[c] for c in classes])],
                             Chart("chart-per-class", "Accuracy per class on the validation split", "Accuracy"),
                             value_max=1, value_format="{:.0%}")
    return {"chart": chart, "rows": [(c, accuracy[c], counts.get(c)) for c in classes]}


def confusion(card, model):
    report = card["evaluation"]
    matrix, labels = report["confusion_matrix"], report.get("classes") or card["classes"]
    if len(matrix) != len(labels) or any(len(row) != len(labels) for row in matrix):
        raise ValueError("confusion matrix does not match the classes")
    matrix = [[int(n) for n in row] for row in matrix]
    chart = charts.heat_map(matrix, labels, labels, Chart(
        "chart-confusion", "Confusion matrix: true class (rows) against predicted class (columns)"))
    return {"chart": chart, "labels": labels, "rows": list(zip(labels, matrix))}


def history(card, model):
    epochs = [r for r in card["history"] if r.get("type", "epoch") == "epoch"]
    if not epochs:
        return None
    x = [int(r["epoch"]) for r in epochs]

    def series(key):
        return [r.get(key) for r in epochs]

    loss = charts.line_chart(x, [("Training loss", series("train_loss")), ("Validation loss", series("val_loss"))],
                             Chart("chart-loss", "Loss per epoch", "Epoch", "Loss"))
    accuracy = charts.line_chart(
        x, [("Training accuracy", series("train_accuracy")), ("Validation accuracy", series("val_accuracy"))],
        Chart("chart-accuracy", "Accuracy per epoch", "Epoch", "Accuracy"), y_range=(0, 1), y_format="{:.0%}")
    return {"loss_chart": loss, "accuracy_chart": accuracy, "rows": epochs}


def calibration(card, model):
    report = card["evaluation"]
    bins = report["calibration_bins"]
    if not bins:
        return None
    chart = charts.reliability_diagram(bins, Chart("chart-calibration",
                                                   "Reliability diagram: accuracy against confidence"))
    return {"chart": chart, "ece": report.get("ece"), "bins": bins}


def misclassified(card, model):
    items = []
    for item in card["evaluation"]["misclassified"]:
        match = re.fullmatch(r"gallery/(.+)\.png", str(item.get("image", "")))
        found = match and gallery_file(model.path, match.group(1))
        url = url_for("dashboard.gallery", version=model.id, name=match.group(1)) if found else None
        items.append({"true": str(item["true"]), "predicted": str(item["predicted"]),
                      "confidence": item.get("confidence"), "url": url})
    return items or None


def dataset(card, model):
    data = card["data"]
    train, held_out = data.get("train_per_class") or {}, data.get("eval_per_class") or {}
    classes = [c for c in card["classes"] if c in train or c in held_out]
    split = str(data.get("eval_split") or "validation")
    counts = [("Training", [train.get(c, 0) for c in classes]), (split.capitalize(), [held_out.get(c, 0)
                                                                                      for c in classes])]
    chart = charts.bar_chart(classes, counts, Chart("chart-dataset", "Images per class", "Images")) if classes else None
    return {"chart": chart, "split": split, "rows": [(c, train.get(c), held_out.get(c)) for c in classes],
            "train_images": data.get("train_images"), "eval_images": data.get("eval_images"),
            "source": data.get("source")}


def samples(card, model):
    found = [(c, gallery_file(model.path, f"samples-{c}")) for c in card["classes"]]
    return [(c, url_for("dashboard.gallery", version=model.id, name=f"samples-{c}")) for c, path in found
            if path] or None


def facts(card, model):
    """The model card as (term, value) pairs, only the parts the card records."""
    arch = card.get("arch") or {}
    kwargs = ", ".join(f"{k}={v}" for k, v in (arch.get("kwargs") or {}).items())
    pairs = [
        ("Name", card.get("name")), ("Version", card.get("version")), ("Created", card.get("created")),
        ("Architecture", f"{arch.get('name')}({kwargs})" if arch.get("name") else None),
        ("Parameters", num(card["parameters"]) if "parameters" in card else None),
        ("Classes", ", ".join(map(str, card.get("classes") or [])) or None),
        ("Input size", f"{card['input_size']} × {card['input_size']} pixels" if "input_size" in card else None),
        ("Test-time augmentation", _tta_text(card)),
        *_serving_precision_facts(card),
        *_training_facts(card.get("training") or {}),
        ("Data source", (card.get("data") or {}).get("source")),
        ("Split", _split_text(card["data"]) if card.get("data") else None),
        ("Software", ", ".join(f"{k} {v}" for k, v in (card.get("versions") or {}).items()) or None),
        ("Weights SHA-256", card.get("weights_sha256")),
    ]
    return [(term, str(value)) for term, value in pairs if value not in (None, "")]


def _tta_text(card) -> str:
    policy = (card.get("serving") or {}).get("tta")
    if policy and policy.get("confident_at") is not None:
        return (f"level {policy['level']} for photos under {policy['confident_at']:.0%} confidence after one pass "
                f"({policy['passes']:.2f} passes per photo on validation)")
    if policy:
        return f"level {policy['level']}"
    return f"level {card['tta']}" if "tta" in card else None


def _serving_precision_facts(card) -> list:
    """One line per device kind the precision gate was measured on."""
    gates = (card.get("serving") or {}).get("precision") or {}
    return [(f"Serving precision ({device})",
             f"{gate['dtype']}: top-1 agreement with fp32 {gate['agreement']:.2%}, accuracy "
             f"{gate['accuracy']:.2%} (fp32 {gate['accuracy_fp32']:.2%})" if gate["passed"]
             else f"fp32 ({gate['dtype']} refused: {gate['why']})") for device, gate in sorted(gates.items())]


def _training_facts(training: dict) -> list:
    return [
        ("Training time", duration(training["train_seconds"]) if "train_seconds" in training else None),
        ("Total time (with evaluation)", duration(training["total_seconds"]) if "total_seconds" in training
         else None),
        ("Device", training.get("device")), ("CPU", training.get("cpu")), ("Precision", training.get("precision")),
        ("Processes × threads", f"{training['world_size']} × {training.get('threads', '?')}"
         if "world_size" in training else None),
    ]


def _split_text(data) -> str:
    text = f"{num(data.get('train_images'))} training, {num(data.get('eval_images'))} " \
           f"{data.get('eval_split') or 'validation'} images"
    if data.get("val_size") is not None:
        text += f" (validation split of {num(data['val_size'])} held out with seed {data.get('split_seed', '?')})"
    return text


def hyperparameters(card, model):
    return [(str(k), str(v)) for k, v in sorted(card["hyperparameters"].items())] or None
