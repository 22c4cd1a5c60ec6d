"""Muon (Keller Jordan, 2024): Nesterov momentum whose update for each conv filter bank is replaced
by the nearest semi-orthogonal matrix, so every direction of the filter space moves at the same
rate. With it airbench reaches the same CIFAR-10 accuracy in 8 epochs that SGD needs 10 for.

One optimizer holds both kinds of parameter group, so the training loop, the learning-rate
schedule and resume checkpoints see a single object: groups with `orthogonalize=True` take Muon
steps, the others plain Nesterov SGD steps exactly as torch.optim.SGD (weight decay added to the
gradient, no dampening).
"""

import torch

# Quintic Newton-Schulz coefficients tuned for speed of convergence near zero (from Muon's author):
# three iterations give singular values within roughly 0.7..1.2, which is all the step needs.
NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)
NEWTON_SCHULZ_STEPS = 3


def orthogonalize(matrix: torch.Tensor) -> torch.Tensor:
    """Approximately U @ V.T for matrix = U S V.T, by Newton-Schulz iteration in bf16."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.bfloat16()
    x = x / (x.norm() + 1e-7)  # singular values <= 1: inside the iteration's basin
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # iterate on the smaller Gram matrix
    for _ in range(NEWTON_SCHULZ_STEPS):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return (x.T if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    def __init__(self, groups, lr: float, momentum: float, nesterov: bool = True):
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=0.0, orthogonalize=False)
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            momentum = group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buffer = state["momentum_buffer"]
                buffer.mul_(momentum).add_(grad)
                update = grad.add(buffer, alpha=momentum) if group["nesterov"] else buffer
                if group["orthogonalize"]:
                    # Filters keep a fixed norm (BatchNorm follows them, so only direction matters);
                    # the update is orthogonalized over (output channels) x (inputs * kernel).
                    p.mul_(len(p) ** 0.5 / p.norm())
                    update = orthogonalize(update.reshape(len(p), -1)).view_as(p)
                p.add_(update, alpha=-group["lr"])
