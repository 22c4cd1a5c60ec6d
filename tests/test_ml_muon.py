"""ml.nets.muon: the orthogonalized update, the SGD groups, and how presets split parameters."""

import pytest
import torch

from ml.nets.models import build_model
from ml.nets.muon import Muon, orthogonalize
from ml.nets.optim import make_optimizer
from ml.train.presets import PRESETS


@pytest.mark.parametrize("shape", [(16, 72), (72, 16)])
def test_orthogonalize_flattens_the_spectrum(shape):
    torch.manual_seed(0)
    # singular values spread 10:1; three Newton-Schulz steps bring them within a narrow band
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    matrix = u[:, :k] @ torch.diag(torch.logspace(0, -1, k)) @ v[:, :k].T
    singular = torch.linalg.svdvals(orthogonalize(matrix).float())
    assert orthogonalize(matrix).shape == shape
    assert singular.max() < 1.3 and singular.min() > 0.6
    # and it keeps the directions: the result lines up with U V^T
    assert torch.nn.functional.cosine_similarity(orthogonalize(matrix).flatten(),
                                                 (u[:, :k] @ v[:, :k].T).flatten(), dim=0) > 0.8


def test_groups_without_orthogonalize_step_exactly_like_torch_sgd():
    torch.manual_seed(0)
    start = torch.randn(5, 3)
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    muon = Muon([dict(params=[ours], weight_decay=0.01)], lr=0.1, momentum=0.85, nesterov=True)
    sgd = torch.optim.SGD([theirs], lr=0.1, momentum=0.85, nesterov=True, weight_decay=0.01)
    for _ in range(4):
        for p, opt in ((ours, muon), (theirs, sgd)):
            opt.zero_grad()
            (p ** 3).sum().backward()
            opt.step()
    torch.testing.assert_close(ours, theirs)


def test_filters_keep_their_norm_and_move():
    torch.manual_seed(0)
    filters = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    before = filters.detach().clone()
    muon = Muon([dict(params=[filters], orthogonalize=True)], lr=0.2, momentum=0.6)
    for _ in range(3):
        filters.grad = torch.randn_like(filters)
        muon.step()
    # each step renormalizes to sqrt(out channels) and then adds an update of spectral size lr
    assert filters.detach().reshape(8, -1).norm() == pytest.approx(8 ** 0.5, rel=0.2)
    assert not torch.allclose(filters.detach(), before)


def test_fast_preset_gives_filters_to_muon_and_the_rest_to_sgd():
    config = PRESETS["fast"]
    model = build_model("airnet", widths=[8, 16, 16])
    groups = make_optimizer(model, config).param_groups
    by_id = {id(p): name for name, p in model.named_parameters()}
    names = [sorted(by_id[id(p)] for p in g["params"]) for g in groups]
    assert names[0] == ["head.weight"] and groups[0]["lr"] == config["lr"]
    assert "whiten.bias" in names[1] and all("norm" in n or n == "whiten.bias" for n in names[1])
    assert groups[1]["lr"] == pytest.approx(config["lr"] * config["bias_lr_scale"])
    assert groups[2]["orthogonalize"] and len(names[2]) == 6 and all(n.endswith("conv1.weight") or
                                                                      n.endswith("conv2.weight") for n in names[2])
    # the frozen whitening filters are trained by nobody
    assert "whiten.weight" not in sum(names, [])
