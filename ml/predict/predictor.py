"""The Predictor: a model folder served. Photos (bytes or paths) in, decoded by ml/data/images.py;
for each a label, its confidence, the top 5, `novelty` (higher = less like the training images;
ml/nets/novelty.py) and `recognised` (novelty at most the card's threshold, or the one given):
false means "none of the ten classes", the label is then only the closest guess; `candidates`: the
classes of the conformal prediction set, most probable first (ml/nets/conformal.py), and
`answer`: "sure" (one candidate), "unsure" (several) or "none" (not recognised).

The card (ml/nets/cardmodel.py) sets the TTA policy, the temperature and the precision, which is
bf16 or fp16 only where the card's agreement gate passed on this kind of device.
"""

import logging
import threading

import numpy as np
import torch

from ml.nets.conformal import answer_kind, candidates
from ml.data.batches import normalize
from ml.data.images import DEFAULT_MAX_PIXELS, decode_image
from ml.nets.cardmodel import CardModel
from ml.nets.device import cast_for_serving
from ml.nets.models import tta_outputs

TOP_K = 5
LOG = logging.getLogger(__name__)


class Predictor:
    """A loaded model folder. `predict` is thread-safe: the model is never mutated after load."""

    def __init__(self, model_dir, device=None, max_pixels: int = DEFAULT_MAX_PIXELS, novelty_threshold=None):
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.card_model = CardModel.load(model_dir, self.device)
        self.model, self.card = self.card_model.model, self.card_model.card
        self.model_dir = str(model_dir)
        self.classes, self.input_size = self.card_model.classes, self.card_model.input_size
        self.norm, self.temperature = self.card_model.norm, self.card_model.temperature
        self.tta, self.confident_at = self.card_model.serving_tta  # the card's measured policy
        self.amp_dtype, why_fp32 = self.card_model.serving_dtype()
        if why_fp32:
            LOG.warning("%s: %s", model_dir, why_fp32)
        # the forward passes run on this copy; self.model stays fp32 (ml.predict.explain's gradients, exports)
        self.serving_model = cast_for_serving(self.model, self.amp_dtype)
        self.max_pixels = max_pixels
        self.novelty_threshold = novelty_threshold if novelty_threshold is not None \
            else self.card_model.novelty_threshold
        self._lock = threading.Lock()  # serialises forward passes: one batch at a time per model

    @property
    def name(self) -> str:
        return self.card.get("name", "model")

    @property
    def version(self) -> str:
        return self.card.get("version", "unknown")

    def decode(self, source) -> np.ndarray:
        """bytes / path -> (H, W, 3) uint8 input array. Raises ml.data.images.ImageError."""
        return decode_image(source, self.input_size, self.max_pixels)

    @property
    def lock(self) -> threading.Lock:
        """Held around every pass through the model, ml.predict.explain's included."""
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
        novelty = self.card_model.novelty(logits, features.float().cpu())
        return logits.softmax(1), novelty

    def describe(self, probs: torch.Tensor, novelty: float) -> dict:
        top = probs.topk(min(TOP_K, len(self.classes)))
        ranked = [{"label": self.classes[i], "probability": float(p)}
                  for p, i in zip(top.values.tolist(), top.indices.tolist())]
        recognised = bool(self.novelty_threshold is None or novelty <= self.novelty_threshold)
        candidate_labels = candidates(probs, self.classes, self.card_model.conformal)
        return {"label": ranked[0]["label"], "confidence": ranked[0]["probability"], "top": ranked,
                "candidates": candidate_labels, "answer": answer_kind(candidate_labels, recognised),
                "recognised": recognised, "novelty": float(novelty)}

    def predict_arrays(self, arrays) -> list:
        if not arrays:
            return []
        probs, novelty = self.probabilities(arrays)
        return [self.describe(p, n) for p, n in zip(probs, novelty.tolist())]

    def predict(self, sources) -> list:
        """Classify several photos (bytes or paths) in one batch. Raises ImageError on the first
        bad one; use `decode` per item to report errors individually."""
        return self.predict_arrays([self.decode(s) for s in sources])
