"""The three answers on the held-out half of the validation split (the half the conformal threshold
never saw): coverage and mean size of the prediction sets, and the shares answered sure, unsure
and "none of these", both as the card states the probabilities (card TTA, fp32; what
`ml.calibrate` fitted on) and as the server computes them (the Predictor: the card's precision
gate and adaptive TTA policy on this device).

    python -m scripts.measure_sets --model models/default --data data

Prints one JSON object. The suite's figures (client variants, corruptions per severity) are in the
card's robustness section, written by `python -m ml.calibrate ... --sets-only`.
"""

import argparse
import json

import torch

from ml.nets import conformal
from ml.predict.predictor import Predictor


def answers(probs: torch.Tensor, labels: torch.Tensor, recognised: torch.Tensor, spec: dict) -> dict:
    """Coverage and set size, and the share of each answer kind; `coverage_recognised`: coverage
    over the photos not refused (what a user who gets candidates sees)."""
    sizes = conformal.set_sizes(probs, spec["threshold"], spec["lambda"], spec["k_reg"])
    covered = (conformal.true_class_scores(probs, labels, spec["lambda"], spec["k_reg"]) <= spec["threshold"]) \
        | (probs.argmax(1) == labels)
    return {"images": len(labels), "accuracy": (probs.argmax(1) == labels).float().mean().item(),
            "coverage": covered.float().mean().item(), "mean_set_size": sizes.float().mean().item(),
            "sure": (recognised & (sizes == 1)).float().mean().item(),
            "unsure": (recognised & (sizes > 1)).float().mean().item(),
            "none": (~recognised).float().mean().item(),
            "unsure_over_3": (recognised & (sizes > 3)).float().mean().item(),
            "coverage_recognised": covered[recognised].float().mean().item()}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m scripts.measure_sets", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/default")
    parser.add_argument("--data", default="data")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model, "cpu")
    card_model, spec = predictor.card_model, predictor.card_model.conformal
    val = card_model.dataset(args.data).val
    held = conformal.calibration_split(len(val.labels))[1]
    images, labels = val.images[held], val.labels[held]
    logits, features = card_model.outputs(images)
    threshold = card_model.novelty_threshold
    stated = answers(logits.softmax(1), labels, card_model.novelty(logits, features) <= threshold, spec)
    arrays = list(images.permute(0, 2, 3, 1).contiguous().numpy())
    probs, novelty = zip(*(predictor.probabilities(arrays[i:i + 250]) for i in range(0, len(arrays), 250)))
    served = answers(torch.cat(probs), labels, torch.cat(novelty) <= threshold, spec)
    print(json.dumps({"model": args.model, "version": card_model.card.get("version"), "held_out_images": len(held),
                      "card_tta_fp32": stated, "served": served,
                      "served_as": {"dtype": str(predictor.amp_dtype or "fp32"), "tta": predictor.tta,
                                    "extra_views_below": predictor.confident_at}}, indent=1))


if __name__ == "__main__":
    main()
