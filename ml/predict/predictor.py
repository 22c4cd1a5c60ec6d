"""Classify photos with a model folder.

    python -m ml.predict --model models/default photo.jpg other.png

prints one JSON object per line per image, in order; an unreadable file gives a line with
"error" and the command exits non-zero after the others. Every answer carries `novelty` (higher =
less like the training images; ml/novelty.py) and `recognised` (novelty at most the card's
threshold, or the one given): false means "none of the ten classes", the label is then only the
closest guess.
"""

import argparse
import json
import logging
import sys
import threading

import numpy as np
import torch

from ml.data.sources import normalize
from ml.data.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from ml.nets.modelfile import load_model_dir, load_novelty_bank
from ml.nets.models import tta_outputs
from ml.nets.novelty import energy_temperature, novelty_scores
from ml.evaluate.serving_policy import cast_for_serving, serving_precision, serving_tta

TOP_K = 5
LOG = logging.getLogger(__name__)


class Predictor:
    """A loaded model folder. `predict` is thread-safe: the model is never mutated after load."""

    def __init__(self, model_dir, device=None, max_pixels: int = DEFAULT_MAX_PIXELS, novelty_threshold=None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model, self.card = load_model_dir(model_dir, self.device)
        self.model_dir = str(model_dir)
        self.classes = self.card["classes"]
        self.input_size = self.card.get("input_size", 32)
        self.tta, self.confident_at = serving_tta(self.card)  # the card's measured policy
        self.temperature = self.card.get("temperature", 1.0)  # see ml/calibrate.py
        # bf16/fp16 only where the card's agreement gate passed on this kind of device
        self.amp_dtype, why_fp32 = serving_precision(self.card, self.device)
        if why_fp32:
            LOG.warning("%s: %s", model_dir, why_fp32)
        # the forward passes run on this copy; self.model stays fp32 (ml.explain's gradients, exports)
        self.serving_model = cast_for_serving(self.model, self.amp_dtype)
        norm = self.card["normalization"]
        self.norm = (norm["mean"], norm["std"])
        self.max_pixels = max_pixels
        # A card without a novelty section (models before it existed) recognises everything and
        # reports the minus-top-probability score.
        spec = self.card.get("novelty") or {}
        self.novelty_method = spec.get("method", "msp")
        self.energy_temperature = energy_temperature(spec)
        self.novelty_bank = load_novelty_bank(model_dir, self.card)
        self.novelty_threshold = novelty_threshold if novelty_threshold is not None else spec.get("threshold")
        self._lock = threading.Lock()  # serialises forward passes: one batch at a time per model

    @property
    def name(self) -> str:
        return self.card.get("name", "model")

    @property
    def version(self) -> str:
        return self.card.get("version", "unknown")

    def decode(self, source) -> np.ndarray:
        """bytes / path -> (H, W, 3) uint8 input array. Raises ml.images.ImageError."""
        return decode_image(source, self.input_size, self.max_pixels)

    @property
    def lock(self) -> threading.Lock:
        """Held around every pass through the model, ml.explain's included."""
        return self._lock

    def inputs(self, arrays) -> torch.Tensor:
        """Decoded input arrays -> the normalised (N, 3, H, W) batch the model reads."""
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)
        return normalize(batch, *self.norm)

    @torch.inference_mode()
    def probabilities(self, arrays):
        """(class probabilities (N, classes), novelty (N,)) for decoded input arrays, in one forward pass."""
        x = self.inputs(arrays)
        model = self.model if self.amp_dtype is None else self.serving_model
        with self._lock:
            logits, features = tta_outputs(model, x.to(self.amp_dtype or torch.float32), self.tta,
                                           self.confident_at, self.temperature)
        logits = logits.float().cpu() / self.temperature
        novelty = novelty_scores(self.novelty_method, logits, features.float().cpu(), self.novelty_bank,
                                 self.energy_temperature)
        return logits.softmax(1), novelty

    def describe(self, probs: torch.Tensor, novelty: float) -> dict:
        top = probs.topk(min(TOP_K, len(self.classes)))
        ranked = [{"label": self.classes[i], "probability": float(p)}
                  for p, i in zip(top.values.tolist(), top.indices.tolist())]
        recognised = self.novelty_threshold is None or novelty <= self.novelty_threshold
        return {"label": ranked[0]["label"], "confidence": ranked[0]["probability"], "top": ranked,
                "recognised": bool(recognised), "novelty": float(novelty)}

    def predict_arrays(self, arrays) -> list:
        if not arrays:
            return []
        probs, novelty = self.probabilities(arrays)
        return [self.describe(p, n) for p, n in zip(probs, novelty.tolist())]

    def predict(self, sources) -> list:
        """Classify several photos (bytes or paths) in one batch. Raises ImageError on the first
        bad one; use `decode` per item to report errors individually."""
        return self.predict_arrays([self.decode(s) for s in sources])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Classify images; prints one JSON line per image.")
    parser.add_argument("--model", default="models/default", help="model folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, GIF, BMP)")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model, args.device)
    decoded, failures = {}, 0
    for i, path in enumerate(args.images):
        try:
            decoded[i] = predictor.decode(path)
        except (ImageError, OSError) as error:
            decoded[i] = error
    good = [i for i, v in decoded.items() if not isinstance(v, Exception)]
    results = dict(zip(good, predictor.predict_arrays([decoded[i] for i in good])))
    for i, path in enumerate(args.images):
        if i in results:
            print(json.dumps({"file": path, **results[i]}))
        else:
            failures += 1
            print(json.dumps({"file": path, "error": str(decoded[i])}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
