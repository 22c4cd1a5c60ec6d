"""Model folders: `model.safetensors` (weights) + `card.json` (everything needed to use them),
and `novelty.safetensors` (training features for the "none of these" score) where the card says.

Writes are atomic (temporary file or folder, then rename). Loading never unpickles: weights are
safetensors, checked against the sha256 recorded in the card, so a truncated or tampered file is
refused with an error naming it.
"""

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from ml.data.files import atomic_folder, sha256_file, write_json_atomic
from ml.data.images import encode_image
from ml.nets.models import build_model

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.json"
CARD_FORMAT = 1
GALLERY_DIR = "gallery"  # the dashboard's thumbnails
NOVELTY_FILE = "novelty.safetensors"


class ModelFileError(Exception):
    """A model folder that cannot be loaded; the message names the file and the reason."""


def write_model_dir(path, model: torch.nn.Module, card: dict, extra_files: dict = None):
    """Write a complete model folder at `path` atomically (replacing any folder there).

    `extra_files` maps relative names to bytes (e.g. gallery thumbnails).
    """
    with atomic_folder(path) as staging:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE))
        card = dict(card, format=CARD_FORMAT, weights_sha256=sha256_file(staging / WEIGHTS_FILE))
        write_json_atomic(staging / CARD_FILE, card)
        for name, data in (extra_files or {}).items():
            target = staging / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return Path(path)


def _png(array_chw: torch.Tensor) -> bytes:
    return encode_image(array_chw.permute(1, 2, 0).numpy())


def gallery_files(images, report, dataset_train, classes, samples_per_class=8) -> dict:
    """`extra_files` for write_model_dir: PNG thumbnails for the dashboard, the misclassified
    validation images (each report entry gets its file's name) and a sample strip per class from
    the training images."""
    files = {}
    for n, entry in enumerate(report["misclassified"]):
        entry["image"] = f"{GALLERY_DIR}/misclassified-{n:03d}.png"
        files[entry["image"]] = _png(images[entry["index"]])
    for c, name in enumerate(classes):
        idx = (dataset_train.labels == c).nonzero().flatten()[:samples_per_class]
        if len(idx):
            strip = torch.cat(list(dataset_train.images[idx]), dim=2)
            files[f"{GALLERY_DIR}/samples-{name}.png"] = _png(strip)
    return files


def read_card(path) -> dict:
    card_path = Path(path) / CARD_FILE
    try:
        card = json.loads(card_path.read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{card_path}: missing model card") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{card_path}: unreadable model card ({error})") from None
    for key in ("arch", "classes", "weights_sha256"):
        if key not in card:
            raise ModelFileError(f"{card_path}: model card lacks {key!r}")
    return card


def load_model_dir(path, device="cpu"):
    """Load (model in eval mode, card) from a model folder, or raise ModelFileError."""
    path = Path(path)
    card = read_card(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise ModelFileError(f"{weights_path}: missing weights file")
    if sha256_file(weights_path) != card["weights_sha256"]:
        raise ModelFileError(f"{weights_path}: checksum does not match the model card "
                             "(truncated, damaged or tampered with)")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFileError(f"{weights_path}: unreadable weights ({error})") from None
    arch = card["arch"]
    try:
        model = build_model(arch["name"], num_classes=len(card["classes"]), **arch.get("kwargs", {}))
        model.load_state_dict(state, strict=True)
    except (ValueError, RuntimeError, TypeError) as error:
        raise ModelFileError(f"{weights_path}: weights do not fit {arch} ({error})") from None
    return model.to(device).eval(), card


def novelty_file(bank: torch.Tensor) -> tuple:
    """(extra_files entry, sha256) for a training-feature bank, to write with `write_model_dir`
    and record in the card's novelty section."""
    data = save({"bank": bank.contiguous()})
    return {NOVELTY_FILE: data}, hashlib.sha256(data).hexdigest()


def load_novelty_bank(path, card):
    """The card's training-feature bank (a tensor), None when its novelty method needs none;
    checked against the sha256 the card records, as the weights are."""
    spec = card.get("novelty") or {}
    if "bank_sha256" not in spec:
        return None
    bank_path = Path(path) / NOVELTY_FILE
    if not bank_path.is_file():
        raise ModelFileError(f"{bank_path}: missing novelty file")
    if sha256_file(bank_path) != spec["bank_sha256"]:
        raise ModelFileError(f"{bank_path}: checksum does not match the model card")
    try:
        return load_file(str(bank_path))["bank"]
    except (SafetensorError, OSError, KeyError) as error:
        raise ModelFileError(f"{bank_path}: unreadable novelty file ({error})") from None
