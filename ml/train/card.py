"""The model card a training run writes beside its weights: what the model is, how it was
trained, on what, how well it does, and with which library versions."""

import hashlib
import platform
from datetime import datetime, timezone

import torch
import torchvision

from ml.data.sources import CIFAR_MEAN, CIFAR_STD
from ml.nets.models import count_parameters
from ml.train.presets import arch_kwargs


def weights_digest(model) -> str:
    """A short hash of every tensor's values: equal only for the same trained weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def make_card(model, config, dataset, report, history, train_seconds, eval_seconds, total_seconds,
              device, amp_dtype, world) -> dict:
    created = datetime.now(timezone.utc)
    return {
        "name": "cifar10-" + config["arch"],
        "version": created.strftime("%Y%m%d-%H%M%S"),
        "created": created.isoformat(timespec="seconds"),
        "arch": {"name": config["arch"], "kwargs": arch_kwargs(config)},
        "parameters": count_parameters(model),
        "classes": list(dataset.classes),
        "input_size": 32,
        "normalization": {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "scale": "0-255 RGB"},
        "preprocess": "EXIF orientation, alpha on white, RGB; JPEG draft decoding to at least 64 px; "
                      "shorter side to 32 (area average when shrinking, bilinear when enlarging), "
                      "centre crop 32x32",
        "tta": config["tta"],
        "hyperparameters": config,
        "data": dict(dataset.describe(), val_size=config["val_size"], split_seed=config["split_seed"]),
        "history": history,
        "evaluation": report,
        "training": {"train_seconds": train_seconds, "eval_seconds": eval_seconds,
                     "total_seconds": total_seconds, "device": str(device),
                     "cpu": platform.processor() or platform.machine(),
                     "precision": str(amp_dtype or "torch.float32"), "world_size": world,
                     "threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
    }
