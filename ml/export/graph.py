"""What an exported model computes, and the export card that says how to feed it.

The exported graph is the Predictor's path from the decoded photo on: uint8 (N, 32, 32, 3) RGB in,
then float, NCHW, the card's normalisation, the network with the card's test-time augmentation,
the temperature, softmax and the novelty score; out come `probabilities`, `logits` (calibrated)
and `novelty`. Decoding stays outside (no graph format decodes JPEG or applies EXIF): the export
card says exactly how, step by step, as ml/data/images.py does it.
"""

from datetime import datetime, timezone

import torch
from torch import nn

from ml.nets.conformal import set_rule
from ml.data.batches import normalize
from ml.data.images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS
from ml.nets.cardmodel import CardModel
from ml.nets.models import tta_outputs_every_view
from ml.nets.novelty import KNN_K, kth_neighbour_distance, novelty_scores

EXPORT_CARD_FORMAT = 1
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits", "novelty")


class ExportedClassifier(nn.Module):
    """What the exported graph computes, from the decoder's output on (see the module docstring)."""

    def __init__(self, card_model: CardModel, tta: int, confident_at: float = None):
        super().__init__()
        self.model, self.tta, self.confident_at = card_model.model, tta, confident_at
        self.norm, self.temperature = card_model.norm, card_model.temperature
        self.novelty_method, self.energy_temperature = card_model.novelty_method, card_model.energy_temperature
        bank = card_model.novelty_bank
        self.register_buffer("bank", bank if bank is not None else torch.zeros(0))

    def forward(self, image):
        x = normalize(image.permute(0, 3, 1, 2), *self.norm)
        logits, features = tta_outputs_every_view(self.model, x, self.tta, self.confident_at, self.temperature)
        logits = logits / self.temperature
        if self.novelty_method == "knn":
            novelty = kth_neighbour_distance(features, self.bank)
        else:
            novelty = novelty_scores(self.novelty_method, logits, temperature=self.energy_temperature)
        return logits.softmax(1), logits, novelty


def tta_spec(level: int, confident_at: float = None) -> dict:
    """The views of ml.nets.models.tta_outputs at `level`, how their logits are combined and, with
    `confident_at`, the adaptive policy that picks the plain view's logits for confident photos."""
    views = ["plain: the 32x32 input"]
    combine = "the plain view's logits"
    if level >= 1:
        views.append("mirror: the input flipped left-right")
        combine = "mean(plain, mirror)"
    if level >= 2:
        views += ["up-left: the input reflect-padded by 1 pixel on each side (34x34), rows 0-31 and columns 0-31",
                  "up-left mirrored", "down-right: the same padded input, rows 2-33 and columns 2-33",
                  "down-right mirrored"]
        combine = ("0.5 * mean(plain, mirror) + 0.25 * mean(up-left, up-left mirrored) "
                   "+ 0.25 * mean(down-right, down-right mirrored)")
    spec = {"level": level, "in_graph": True, "views": views,
            "combine": f"{combine}, on the normalised input, before the temperature"}
    if level >= 1 and confident_at is not None:
        spec["adaptive"] = {"confident_at": confident_at,
                            "rule": f"the plain view's logits alone when max(softmax(plain logits / temperature)) "
                                    f">= {confident_at:g}, else the combination; in the graph every view is "
                                    "computed and the rule picks per photo, as the website answers"}
    return spec


def preprocessing_spec(size: int) -> dict:
    """ml.data.images.decode_image, step by step: what a client does before the graph."""
    return {
        "reference": "ml/data/images.py decode_image (Pillow)",
        "decode": f"Pillow Image.open; formats {sorted(ALLOWED_FORMATS)}; at most {DEFAULT_MAX_PIXELS:,} "
                  "pixels (refused from the header); animations: the first frame",
        "jpeg_draft": f"JPEG only: image.draft('RGB', ({2 * size}, {2 * size})) before loading, i.e. "
                      "DCT-domain downscaling by 1/2..1/8 while both sides stay at least "
                      f"{2 * size} pixels",
        "exif_transpose": "PIL.ImageOps.exif_transpose, after loading",
        "colour": "16-bit greyscale: the top 8 bits (shift right by 8 when any value exceeds 255); "
                  "palette with transparency: to RGBA; RGBA/LA/PA: alpha-composited onto opaque white; "
                  "then Image.convert('RGB')",
        "resize": {"shorter_side": size, "longer_side": f"int({size} * longer / shorter), truncated",
                   "filter_when_shrinking": "Image.BOX (area average)",
                   "filter_when_enlarging": "Image.BILINEAR",
                   "skipped_when": f"the image is already {size}x{size}"},
        "crop": {"type": "centre", "size": [size, size],
                 "offset": f"left = round((width - {size}) / 2), top = round((height - {size}) / 2), "
                           "Python's round"},
        "letterbox": False,
        "array": f"numpy uint8 (height {size}, width {size}, 3 RGB), stacked into a batch (N, {size}, {size}, 3)",
    }


def website_policy(card_model: CardModel) -> dict:
    """How the website runs the same model (ml/evaluate/serving_policy.py): its TTA policy and, per
    kind of device, the precision that passed the agreement gate against fp32."""
    level, confident_at = card_model.serving_tta
    gates = card_model.precision_gates
    return {"level": level, "extra_views_below_confidence": confident_at,
            "precision": {device: {"dtype": gate["dtype"] if gate["passed"] else "fp32",
                                   "top1_agreement_with_fp32": gate.get("agreement")}
                          for device, gate in gates.items()}}


def export_card(card_model: CardModel, fmt: str, tta: int, confident_at: float = None) -> dict:
    """The export card: the model, its input and outputs, what a client does before the graph, and
    what the graph does, from the model's card."""
    card, size, (mean, std) = card_model.card, card_model.input_size, card_model.norm
    method, t = card_model.novelty_method, card_model.energy_temperature
    scores = {"msp": "minus the highest probability",
              "energy": f"minus {t:g} * logsumexp(logits / {t:g})" if t != 1 else "minus logsumexp(logits)",
              "knn": "distance of the L2-normalised penultimate features (plain view) to their "
                     f"{KNN_K}th nearest neighbour in a bank of training features, embedded in the graph"}
    return {
        "export_format": EXPORT_CARD_FORMAT, "format": fmt,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": card.get("name"), "version": card.get("version"), "arch": card["arch"],
                  "weights_sha256": card["weights_sha256"]},
        "classes": card_model.classes,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", size, size, 3],
                  "layout": "NHWC, RGB, 0-255: the decoded photo (preprocessing), not normalised"},
        "outputs": {"probabilities": "(batch, classes) softmax of the calibrated logits",
                    "logits": "(batch, classes) TTA-combined logits divided by the temperature",
                    "novelty": "(batch,) higher = less like the training images"},
        "preprocessing": preprocessing_spec(size),
        "in_graph": ["cast to float32", "NHWC to NCHW", "normalisation", "network with the TTA views",
                     "divide by the temperature", "softmax", "novelty"],
        "normalization": {"mean": mean, "std": std,
                          "formula": "(pixel - 255 * mean[c]) / (255 * std[c]), pixel in 0..255"},
        "tta": dict(tta_spec(tta, confident_at), website_level=card_model.tta,
                    website_policy=website_policy(card_model)),
        "temperature": card_model.temperature,
        "novelty": {"method": method, "score": scores[method], "threshold": card_model.novelty_threshold,
                    "rule": "recognised when novelty <= threshold (always, without a threshold); "
                            "otherwise the answer is 'none of these' and the label only the closest guess"},
        "conformal": conformal_spec(card_model.conformal),
        "answer": "label = classes[argmax(probabilities)], confidence = its probability, the top 5 by probability; "
                  "candidates by the conformal rule (the label alone without one); answer 'none' when not "
                  "recognised, else 'sure' with one candidate and 'unsure' with several",
    }


def conformal_spec(spec):
    """The prediction sets as a client computes them from the probabilities (None: the model has none)."""
    if not spec:
        return None
    return {key: spec[key] for key in ("method", "coverage", "threshold", "lambda", "k_reg")} | {
        "rule": set_rule(spec), "held_out": spec.get("held_out")}


def build_exported(model_dir, tta=None):
    """(ExportedClassifier in eval mode, the model's CardModel) for a model folder; `tta` None: the
    website's policy (the card's serving TTA level and adaptive threshold), else every view of
    level `tta` for every photo."""
    card_model = CardModel.load(model_dir)
    level, confident_at = card_model.serving_tta if tta is None else (tta, None)
    return ExportedClassifier(card_model, level, confident_at).eval(), card_model


def example_input(size: int) -> torch.Tensor:
    return torch.zeros(1, size, size, 3, dtype=torch.uint8)

