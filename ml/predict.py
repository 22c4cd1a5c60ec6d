"""Classify photos with a model folder.

    python -m ml.predict --model models/default photo.jpg other.png

prints one JSON object per line per image, in order; an unreadable file gives a line with
"error" and the command exits non-zero after the others.
"""

import argparse
import json
import sys
import threading

import numpy as np
import torch

from ml.data import normalize
from ml.device import autocast
from ml.images import DEFAULT_MAX_PIXELS, ImageError, decode_image
from ml.modelfile import load_model_dir
from ml.models import tta_logits

TOP_K = 5


class Predictor:
    """A loaded model folder. `predict` is thread-safe: the model is never mutated after load."""

    def __init__(self, model_dir, device=None, max_pixels: int = DEFAULT_MAX_PIXELS):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model, self.card = load_model_dir(model_dir, self.device)
        self.model_dir = str(model_dir)
        self.classes = self.card["classes"]
        self.input_size = self.card.get("input_size", 32)
        self.tta = self.card.get("tta", 0)
        self.temperature = self.card.get("temperature", 1.0)  # see ml/calibrate.py
        self.amp_dtype = None  # full precision: the temperature was fitted on full-precision logits
        norm = self.card["normalization"]
        self.norm = (norm["mean"], norm["std"])
        self.max_pixels = max_pixels
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

    @torch.inference_mode()
    def probabilities(self, arrays) -> torch.Tensor:
        """Class probabilities (N, classes) for decoded input arrays, in one forward pass."""
        batch = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).to(self.device)
        x = normalize(batch, *self.norm)
        with self._lock, autocast(self.device, self.amp_dtype):
            logits = tta_logits(self.model, x, self.tta)
        return (logits.float() / self.temperature).softmax(1).cpu()

    def describe(self, probs: torch.Tensor) -> dict:
        top = probs.topk(min(TOP_K, len(self.classes)))
        ranked = [{"label": self.classes[i], "probability": float(p)}
                  for p, i in zip(top.values.tolist(), top.indices.tolist())]
        return {"label": ranked[0]["label"], "confidence": ranked[0]["probability"], "top": ranked}

    def predict_arrays(self, arrays) -> list:
        if not arrays:
            return []
        return [self.describe(p) for p in self.probabilities(arrays)]

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
