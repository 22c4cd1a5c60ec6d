"""A model folder's network and its card, read once: the one place that says what a card's fields
mean for running the model. Prediction (ml/predict), evaluation and the serving policy
(ml/evaluate), calibration (ml/calibrate) and export (ml/export) all run a model through a
CardModel.

What a card says about running its model:
- `classes`, `input_size`, and `normalization`: the per-channel mean and std of 0..1 pixels;
- `temperature`: calibrated probabilities are softmax(logits / T) (ml/calibrate/finish.py);
- `tta`: the test-time augmentation level it was evaluated at; `serving.tta`: the policy served
  (a level, and the confidence under which the extra views run); `serving.precision`: per kind of
  device, whether a faster dtype passed the agreement gate against fp32
  (ml/evaluate/serving_policy.py measures both);
- `novelty`: the "none of these" method, its threshold and the energy score's temperature
  (ml/nets/novelty.py); a knn card's training-feature bank is stored beside the weights;
- `conformal`: the prediction sets' rule, threshold and stated coverage (ml/nets/conformal.py);
  a card without one answers with the top class alone;
- `data`: the validation split it was trained beside (its size and seed).
"""

import sys

import torch

from ml.data.batches import normalize
from ml.data.sources import load_dataset
from ml.nets.device import DTYPES, autocast, precision_candidates
from ml.nets.modelfile import load_model_dir, load_novelty_bank
from ml.nets.models import tta_outputs
from ml.nets.novelty import energy_temperature, novelty_scores

EVAL_BATCH = 500  # images per forward pass when a whole split is run


@torch.no_grad()
def predict_outputs(model, images: torch.Tensor, device, norm, tta=0, amp_dtype=None):
    """(logits, penultimate features), float32 on CPU, for uint8 images (N, 3, H, W), in order."""
    model.eval()
    logits, features = [], []
    for batch in images.split(EVAL_BATCH):
        x = normalize(batch.to(device), *norm)
        with autocast(device, amp_dtype):
            batch_logits, batch_features = tta_outputs(model, x, tta)
        logits.append(batch_logits.float().cpu())
        features.append(batch_features.float().cpu())
    return torch.cat(logits), torch.cat(features)


def serving_tta(card: dict) -> tuple:
    """(TTA level, adaptive confidence threshold or None) the card's policy serves with."""
    policy = (card.get("serving") or {}).get("tta") or {}
    return policy.get("level", card.get("tta", 0)), policy.get("confident_at")


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


class CardModel:
    """A network on `device` and its card, read here once (the module docstring says what each
    field means); `novelty_bank`: normalised training features for the knn score, when there are."""

    def __init__(self, model, card: dict, device="cpu", novelty_bank=None):
        self.model, self.card, self.device = model, card, torch.device(device)
        self.classes = card["classes"]
        self.input_size = card.get("input_size", 32)
        self.norm = (card["normalization"]["mean"], card["normalization"]["std"])
        self.temperature = float(card.get("temperature", 1.0))
        self.tta = card.get("tta", 0)
        self.serving_tta = serving_tta(card)
        self.precision_gates = (card.get("serving") or {}).get("precision") or {}
        # A card without a novelty section (models before it existed) recognises everything and
        # reports the minus-top-probability score.
        spec = card.get("novelty") or {}
        self.novelty_method = spec.get("method", "msp")
        self.novelty_threshold = spec.get("threshold")
        self.energy_temperature = energy_temperature(spec)
        self.novelty_bank = novelty_bank
        self.conformal = card.get("conformal")

    @classmethod
    def load(cls, path, device="cpu") -> "CardModel":
        """The model folder at `path` (ModelFileError when it is incomplete or damaged)."""
        model, card = load_model_dir(path, device)
        return cls(model, card, device, load_novelty_bank(path, card))

    def with_card(self, novelty_bank=None, **fields) -> "CardModel":
        """The same network with these card fields set (and this bank, when given)."""
        bank = self.novelty_bank if novelty_bank is None else novelty_bank
        return CardModel(self.model, dict(self.card, **fields), self.device, bank)

    def serving_dtype(self):
        """(dtype this device serves in, None for fp32; why fp32 when a faster dtype was possible)."""
        return serving_precision(self.card, self.device)

    def raw_outputs(self, images: torch.Tensor, tta=None, amp_dtype=None):
        """(logits before the temperature, features) for uint8 images (N, 3, H, W), at the card's
        TTA level unless `tta` says otherwise, under autocast to `amp_dtype`."""
        level = self.tta if tta is None else tta
        return predict_outputs(self.model, images, self.device, self.norm, level, amp_dtype)

    def outputs(self, images: torch.Tensor, amp_dtype=None):
        """(calibrated logits, features) for uint8 images at the card's TTA level."""
        logits, features = self.raw_outputs(images, amp_dtype=amp_dtype)
        return logits / self.temperature, features

    def novelty(self, logits: torch.Tensor, features: torch.Tensor = None, method=None) -> torch.Tensor:
        """Novelty per row of calibrated logits (and features), by the card's method unless `method`
        says otherwise, at the card's energy temperature, against this model's bank."""
        return novelty_scores(method or self.novelty_method, logits, features, self.novelty_bank,
                              self.energy_temperature)

    def dataset(self, data_root, val_size=None):
        """The dataset the card describes, split as in its training run (same held-out images), so
        a report or a calibration never looks at images the model was trained on."""
        split_info = self.card.get("data", {})
        dataset = load_dataset(data_root, val_size=val_size or split_info.get("val_size", 5000),
                               split_seed=split_info.get("split_seed", 0))
        if dataset.classes != self.classes:
            if not set(self.classes) < set(dataset.classes):
                sys.exit(f"the dataset's classes {dataset.classes} differ from the model's {self.classes}")
            dataset = dataset.only_classes(self.classes)  # an open-set model: the rest are unknowns
        return dataset
