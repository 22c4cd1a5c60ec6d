"""Optimisers, the learning-rate schedule and lookahead: what a training step updates and by how much."""

import torch

from ml.nets.muon import Muon

WARMUP_FRACTION = 0.23        # airbench schedule: 0.2x -> 1x over this share of steps, then -> 0.07x
LOOKAHEAD_EVERY = 5           # steps between lookahead (EMA pull-back) updates


def make_optimizer(model, config):
    """SGD for every parameter (airbench94), or Muon for the conv filters and SGD for the rest
    (airbench94_muon, which also gives the whitening bias the BatchNorm shifts' rate)."""
    # BatchNorm shifts learn `bias_lr_scale` times faster; their decay is scaled back so every
    # parameter decays by the same amount per step.
    muon = config["optimizer"] == "muon"
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    filters = [p for n, p in named if muon and p.ndim == 4]
    shifts = [p for n, p in named if "norm" in n or (muon and n == "whiten.bias")]
    taken = {id(p) for p in filters + shifts}
    others = [p for n, p in named if id(p) not in taken]
    lr, wd, scale = config["lr"], config["weight_decay"], config["bias_lr_scale"]
    groups = [dict(params=others, lr=lr, weight_decay=wd, base_lr=lr)]
    if shifts:
        groups.append(dict(params=shifts, lr=lr * scale, weight_decay=wd / scale, base_lr=lr * scale))
    if not muon:
        return torch.optim.SGD(groups, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"])
    groups.append(dict(params=filters, lr=config["muon_lr"], base_lr=config["muon_lr"],
                       momentum=config["muon_momentum"], orthogonalize=True))
    return Muon(groups, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"])


def set_lr(optimizer, factor):
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1 - step / total_steps
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        frac = step / warmup
        return 0.2 * (1 - frac) + 1.0 * frac
    frac = (step - warmup) / max(1, total_steps - warmup)
    return 1.0 * (1 - frac) + 0.07 * frac


class Lookahead:
    """Every few steps pull the weights toward a slow exponential average (airbench)."""

    def __init__(self, model):
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model, decay: float):
        for average, current in zip(self.average.values(), model.state_dict().values()):
            if current.dtype.is_floating_point:
                average.lerp_(current, 1 - decay)
                current.copy_(average)

    def after_step(self, model, global_step: int, total_steps: int):
        """The update due after `global_step` steps, if any; the pull-back weakens as training ends."""
        if global_step % LOOKAHEAD_EVERY == 0:
            self.update(model, 0.95 ** 5 * (global_step / total_steps) ** 3)
