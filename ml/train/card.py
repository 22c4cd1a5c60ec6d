"""The model card a training run writes beside its weights: what the model is and how to run it
(the part ml/nets/cardmodel.py reads), then how the run went: on what, how well, how long, with
which library versions."""

import hashlib
import platform
import time
from datetime import datetime, timezone

import torch
import torchvision

from ml.data.sources import CIFAR_MEAN, CIFAR_STD
from ml.nets.models import arch_kwargs, count_parameters


def weights_digest(model) -> str:
    """A short hash of every tensor's values: equal only for the same trained weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def model_card(config: dict, model, dataset) -> dict:
    """What the model trained per `config` is, and how to run it."""
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
    }


def run_record(run, state, report: dict, train_seconds: float) -> dict:
    """How the run went: its epochs, the final report, where its time went, the machine and library
    versions. `run` is ml/train/loop.py's Run (device, precision, processes, wall clock start)."""
    total_seconds = time.perf_counter() - run.wall_start
    return {
        "history": state.history,
        "evaluation": report,
        "training": {"train_seconds": train_seconds, "eval_seconds": state.eval_seconds,
                     "total_seconds": total_seconds, "device": str(run.device),
                     "cpu": platform.processor() or platform.machine(),
                     "precision": str(run.amp_dtype or "torch.float32"), "world_size": run.world,
                     "threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
    }
