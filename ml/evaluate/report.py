"""Evaluation reports: accuracy, per-class accuracy, confusion matrix, loss, and calibration
(the one expected calibration error: `calibration`)."""

import torch
import torch.nn.functional as F

CALIBRATION_BINS = 15


def calibration(confidence: torch.Tensor, correct: torch.Tensor, bins=CALIBRATION_BINS):
    """Expected calibration error and the reliability-diagram bins (equal-width on confidence)."""
    edges = torch.linspace(0, 1, bins + 1)
    table, ece = [], 0.0
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        in_bin = (confidence > lo) & (confidence <= hi)
        count = int(in_bin.sum())
        if count:
            acc = correct[in_bin].float().mean().item()
            conf = confidence[in_bin].mean().item()
            ece += count / len(confidence) * abs(acc - conf)
        else:
            acc = conf = None
        table.append({"low": lo, "high": hi, "count": count, "accuracy": acc, "confidence": conf})
    return ece, table


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """`calibration`'s ECE of the answers these logits give."""
    confidence, predicted = logits.softmax(1).max(1)
    return calibration(confidence, predicted == labels)[0]


def report_from_logits(logits: torch.Tensor, labels: torch.Tensor, classes, split_name: str,
                       tta: int = 0, misclassified_limit: int = 48) -> dict:
    """The JSON evaluation report for given logits and true labels."""
    k = len(classes)
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    correct = predicted == labels
    confusion = torch.zeros(k, k, dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class_total = confusion.sum(1)
    per_class = {c: (confusion[i, i].item() / per_class_total[i].item() if per_class_total[i] else None)
                 for i, c in enumerate(classes)}
    ece, bins = calibration(confidence, correct)
    # The most confident mistakes first: the ones a user is most likely to be misled by.
    wrong = (~correct).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:misclassified_limit]
    return {
        "split": split_name,
        "images": len(labels),
        "tta": tta,
        "accuracy": correct.float().mean().item(),
        "loss": F.cross_entropy(logits, labels).item(),
        "per_class_accuracy": per_class,
        "classes": list(classes),
        "confusion_matrix": confusion.tolist(),
        "ece": ece,
        "calibration_bins": bins,
        "misclassified": [{"index": int(i), "true": classes[labels[i]], "predicted": classes[predicted[i]],
                           "confidence": confidence[i].item()} for i in wrong],
    }


def shift_report(logits, labels, reference=None) -> dict:
    """Accuracy, ECE, mean confidence and (with `reference` answers) agreement of shifted inputs."""
    confidence, predicted = logits.softmax(1).max(1)
    correct = predicted == labels
    report = {"inputs": len(labels), "accuracy": correct.float().mean().item(),
              "ece": calibration(confidence, correct)[0],
              "mean_confidence": confidence.mean().item()}
    if reference is not None:
        report["agreement"] = (predicted == reference).float().mean().item()
    return report
