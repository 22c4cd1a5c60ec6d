"""Network architectures, chosen by name: `build_model(name, **kwargs)`, and how every one of
them is asked for logits with test-time augmentation (`tta_logits`).

- `seednet`: the tutorial's CNN, unchanged, kept as the baseline.
- `airnet`: the fast, accurate default. After Keller Jordan's airbench (CIFAR-10 speed records):
  a frozen 2x2 patch-whitening first layer, three conv groups (conv-pool-BN-GELU-conv-BN-GELU),
  BatchNorm without scale, dirac-initialised convs and a scaled linear head.
"""

import torch
import torch.nn.functional as F
from torch import nn

ARCHITECTURES = {}


def register(name):
    def wrap(cls):
        ARCHITECTURES[name] = cls
        return cls
    return wrap


def build_model(name: str, **kwargs) -> nn.Module:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[name](**kwargs)


def arch_kwargs(config: dict) -> dict:
    """The architecture's constructor arguments that a training config sets (and a card records)."""
    return {"widths": config["widths"]} if config["arch"] == "airnet" else {}


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


TTA_VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per image at each level


EXTRA_VIEWS_PER_PASS = 512  # images per forward pass of the stacked extra views (bounds memory)


def extra_views(model, x: torch.Tensor, level: int) -> list:
    """Logits of the views beyond the plain one, in order: mirror; then (level 2) one-pixel
    translations up-left and down-right, each plain and mirrored (airbench's flip-and-translate).
    The views run stacked, as one forward pass: for the few unsure photos of an adaptive batch
    that is 2.2x faster than a pass per view (3 photos x 5 views, bf16 on one core: 66 ms, not 148)."""
    if level == 0:
        return []
    views = [x.flip(3)]
    if level >= 2:
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        h, w = x.shape[2:]
        for shifted in (padded[:, :, :h, :w], padded[:, :, 2:, 2:]):
            views += [shifted, shifted.flip(3)]
    stacked = torch.cat(views).contiguous(memory_format=torch.channels_last)
    if len(stacked) <= EXTRA_VIEWS_PER_PASS:  # (an exported graph's trace takes this branch)
        logits = model(stacked)
    else:
        logits = torch.cat([model(part) for part in stacked.split(EXTRA_VIEWS_PER_PASS)])
    return list(logits.unflatten(0, (len(views), -1)).unbind(0))  # -1: a batch size an export keeps dynamic


def combine_views(views, level: int) -> torch.Tensor:
    """TTA logits from the plain view's logits followed by `extra_views`: each view averaged
    with its mirror, the translations weighing half as much as the original."""
    if level == 0:
        return views[0]
    logits = 0.5 * (views[0] + views[1])
    if level >= 2:
        logits = 0.5 * logits + 0.25 * (0.5 * (views[2] + views[3]) + 0.5 * (views[4] + views[5]))
    return logits


def tta_outputs(model, x: torch.Tensor, level: int, confident_at: float = None, temperature: float = 1.0):
    """(logits with test-time augmentation, penultimate features of the plain view).

    TTA levels: 0 none; 1 average with the mirror image; 2 also average one-pixel translations.
    Adaptive (`confident_at`): every image gets the plain pass; only those whose calibrated top
    probability (plain logits / `temperature`) is below `confident_at` get the extra views, so a
    confident photo costs one pass instead of six. The features (what the novelty score reads)
    come from the plain view, the pass every level makes anyway."""
    if level == 0 or confident_at is None:
        return tta_outputs_every_view(model, x, level)
    features = model.penultimate(x)
    plain = model.classify(features)
    unsure = needs_extra_views(plain, confident_at, temperature)
    logits = plain.clone()
    if unsure.any():
        logits[unsure] = combine_views([plain[unsure], *extra_views(model, x[unsure], level)], level).to(plain.dtype)
    return logits, features


def needs_extra_views(plain: torch.Tensor, confident_at: float, temperature: float) -> torch.Tensor:
    """The rows the adaptive policy gives the extra views: calibrated top probability of the plain
    view (logits / `temperature`) below `confident_at`."""
    return (plain.float() / temperature).softmax(1).amax(1) < confident_at


def tta_outputs_every_view(model, x: torch.Tensor, level: int, confident_at: float = None,
                           temperature: float = 1.0):
    """`tta_outputs` without a branch on the data, for exported graphs (a trace keeps one path):
    every view runs for every photo and the adaptive policy then picks, per row, the combined or
    the plain logits. Same answers as the server's policy, at full TTA's cost. An export that ran
    every view and always combined them disagreed with the site on 7 of 475 photos."""
    features = model.penultimate(x)
    plain = model.classify(features)
    if level == 0:
        return plain, features
    combined = combine_views([plain, *extra_views(model, x, level)], level)
    if confident_at is None:
        return combined, features
    return torch.where(needs_extra_views(plain, confident_at, temperature)[:, None], combined, plain), features


def tta_logits(model, x: torch.Tensor, level: int) -> torch.Tensor:
    """Logits with test-time augmentation `level` (see `tta_outputs`)."""
    return tta_outputs(model, x, level)[0]


@register("seednet")
class SeedNet(nn.Module):
    """The tutorial's network: 3 conv (3x3, no padding) + 4 linear layers, 32x32 RGB in."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.2):
        super().__init__()

        def conv_block(c_in, c_out):
            return [nn.Conv2d(c_in, c_out, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(dropout)]

        # 32 -> conv 30 -> pool 15 -> conv 13 -> pool 6 -> conv 4 -> pool 2: 128 * 2 * 2 = 512
        self.features = nn.Sequential(*conv_block(3, 32), *conv_block(32, 64), *conv_block(64, 128))
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(512, 128), nn.ReLU(),
            nn.Linear(128, 64), nn.ReLU(),
            nn.Linear(64, 32), nn.ReLU(),
            nn.Linear(32, num_classes),
        )

    def penultimate(self, x):
        return self.classifier[:-1](self.features(x))

    def classify(self, features):
        return self.classifier[-1](features)

    def forward(self, x):
        return self.classify(self.penultimate(x))


class ScaleFreeBatchNorm(nn.BatchNorm2d):
    """BatchNorm with a frozen unit scale: only the shift is learned (airbench)."""

    def __init__(self, num_features, momentum=0.6, eps=1e-12):
        # airbench's "momentum" is the running-average decay; PyTorch's is its complement.
        super().__init__(num_features, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad = False


class DiracConv(nn.Conv2d):
    """3x3 'same' conv initialised close to identity, so deep stacks start well-conditioned."""

    def __init__(self, c_in, c_out):
        super().__init__(c_in, c_out, kernel_size=3, padding="same", bias=False)

    def reset_parameters(self):
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[:w.size(1)])


class ConvGroup(nn.Module):
    def __init__(self, c_in, c_out, bn_momentum):
        super().__init__()
        self.conv1 = DiracConv(c_in, c_out)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = ScaleFreeBatchNorm(c_out, bn_momentum)
        self.conv2 = DiracConv(c_out, c_out)
        self.norm2 = ScaleFreeBatchNorm(c_out, bn_momentum)
        self.activ = nn.GELU()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


@register("airnet")
class AirNet(nn.Module):
    def __init__(self, num_classes: int = 10, widths=(64, 256, 256), whiten_kernel: int = 2,
                 bn_momentum: float = 0.6, output_scale: float = 1 / 9):
        super().__init__()
        whiten_width = 2 * 3 * whiten_kernel ** 2
        # Set from training-image patches by init_whitening(); frozen afterwards (bias trains briefly).
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad = False
        self.activ = nn.GELU()
        c_in, groups = whiten_width, []
        for width in widths:
            groups.append(ConvGroup(c_in, width, bn_momentum))
            c_in = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.output_scale = output_scale

    def penultimate(self, x):
        return self.pool(self.groups(self.activ(self.whiten(x)))).flatten(1)

    def classify(self, features):
        return self.head(features) * self.output_scale

    def forward(self, x):
        return self.classify(self.penultimate(x))

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4):
        """Make the first layer whiten 2x2 patches: eigenvectors of the patch covariance,
        scaled by 1/sqrt(eigenvalue), in +/- pairs so GELU keeps both signs."""
        k = self.whiten.kernel_size[0]
        c = images.shape[1]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)
        patches = patches.transpose(1, 3).reshape(-1, c * k * k)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        filters = eigenvectors.reshape(-1, c, k, k)  # rows were flattened as (c, kh, kw)
        filters = filters / torch.sqrt(eigenvalues + eps).view(-1, 1, 1, 1)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))
