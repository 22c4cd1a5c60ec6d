"""Resume checkpoints: a run's progress (`TrainState`) and the state of what it trains, written
on a stop and read back by `--resume`.

A checkpoint holds only tensors and plain containers, so it loads with
torch.load(weights_only=True) and never unpickles arbitrary objects.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from ml.data.files import atomic_path
from ml.nets.optim import Lookahead


@dataclass
class TrainState:
    """Where a run is, and the live objects it trains."""

    # live objects: their state_dicts go into a checkpoint, the objects themselves never do
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    lookahead: Optional[Lookahead]
    # progress, saved as is
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    elapsed_before: float = 0.0     # training seconds of earlier processes (before a resume)
    eval_seconds: float = 0.0       # validation passes, kept off the training clock
    history: list = field(default_factory=list)
    aug_rng: Optional[torch.Tensor] = None  # augmentation generator state when stopped mid-epoch
    # this process only: when its share of the training clock started
    start_time: float = 0.0

    PROGRESS = ("epoch", "step_in_epoch", "global_step", "elapsed_before", "eval_seconds", "history",
                "aug_rng")

    def to_checkpoint(self, config: dict) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "lookahead": self.lookahead.average if self.lookahead else None,
                "config": json.dumps(config), "torch_rng": torch.get_rng_state(),
                **{key: getattr(self, key) for key in self.PROGRESS}}

    def from_checkpoint(self, saved: dict):
        """Load a checkpoint's state into the live objects and its progress into this state."""
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scaler.load_state_dict(saved["scaler"])
        if self.lookahead is not None:
            self.lookahead.average = saved["lookahead"]
        for key in self.PROGRESS:
            setattr(self, key, saved[key])
        torch.set_rng_state(saved["torch_rng"])  # dropout masks continue as if never stopped


def save_checkpoint(path, checkpoint: dict):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, mode=0o644) as tmp:
        torch.save(checkpoint, tmp)


def load_checkpoint(path, config: dict) -> dict:
    """The checkpoint at `path`; ValueError when it was written with other settings than `config`."""
    # weights_only: only tensors and plain containers; never arbitrary objects
    saved = torch.load(path, map_location="cpu", weights_only=True)
    if json.loads(saved["config"]) != config:
        raise ValueError(f"{path} was written with other settings; resume with the same flags")
    return saved
