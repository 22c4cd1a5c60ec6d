"""Training augmentations for photos as clients send them.

Two kinds, both reproducible for a seed:
- the serving path (`client_bank`, `client_mix`): a training image upscaled with a random filter to
  96-320 px, sometimes letterboxed, saved as PNG, JPEG or WebP at a random quality and decoded by
  `ml.data.images.decode_image` (JPEG draft mode included), exactly as an upload is. That needs Pillow,
  so a bank of such round trips is made once (two per image, about 3 ms each) and cached beside
  the dataset cache; each epoch swaps a share of the images for one of their round trips.
- natural-photo changes (`photo_augment`): random-resized crops, colour and contrast jitter,
  greyscale, blur and sensor noise, cutout, PixMix-style mixing with procedural pictures; batched
  tensor ops on the training device.
- resampling twins (`resampled`) for the consistency loss of ml/train/loop.py: a share of the batch
  again, upscaled and area-averaged back down on the training device.
"""

import math
import random
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ml.data.batches import augment, normalize
from ml.data.sources import Split
from ml.data.cache import cached_tensors, content_key
from ml.data.images import decode_image, encode_image
from ml.data.outliers import procedural_set

BANK_FORMAT = 1          # bump when the round trip changes, so cached banks are rebuilt
BANK_COPIES = 2          # round trips kept per training image
UPSCALE_RANGE = (3, 10)  # x3..x10 (96-320 px): JPEGs from 128 px decode in draft mode at 1/2, 1/4
# Encoder speed settings: PNG is lossless whatever its level, and WebP's fastest method is still
# lossy WebP at that quality; at 256 px the defaults cost 20 ms (PNG) and 14 ms (WebP) a round trip.
ENCODER_OPTIONS = {"PNG": {"compress_level": 1}, "JPEG": {}, "WEBP": {"method": 0}}
FILTERS = [Image.NEAREST, Image.BILINEAR, Image.BICUBIC, Image.LANCZOS, Image.BOX]
FORMATS = ["PNG", "JPEG", "WEBP"]
QUALITY_RANGE = (40, 95)
LETTERBOX_SHARE = 0.2    # share of round trips framed 5:4 to 16:9, as gallery crops and screenshots
CROP_SCALE = (0.35, 1.0)     # random-resized crop: share of the image area kept
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.4                 # brightness, contrast and saturation factors drawn from 1 +/- JITTER
GREY_SHARE = 0.2             # of the colour-jittered images, the share turned grey
BLUR_SIGMA = (0.3, 1.2)      # pixels
NOISE_SIGMA = (0.0, 0.08)    # of the 0..1 range
CUTOUT_SIZE = 10             # pixels, a square at a random place
GREY_WEIGHTS = (0.299, 0.587, 0.114)
# PixMix (Hendrycks et al., CVPR 2022), its CIFAR settings: up to 4 rounds, mixing weights from
# Beta(3, 1) / Beta(1, 3). The paper mixes with fractals; here with the procedural pictures of
# ml/data/outliers.py, drawn from seeds the far-out sets do not use (they draw seed 0), so those
# sets' kinds are no longer unseen in training: the package photos and the open-set protocol's
# held-out classes are the far-out measures that stay untouched.
PIXMIX_ROUNDS = 4
PIXMIX_BETA = 3.0
PIXMIX_SOURCES = ("textures", "noise", "rendered text", "screenshots")
PIXMIX_PICTURES = 256        # per source, drawn once per process (about 5 s for all four)
PIXMIX_SEED = 1


# ---- the serving path, through Pillow ----

def client_round_trip(array_hwc: np.ndarray, rng: random.Random) -> np.ndarray:
    """One random upload of a 32x32 image: upscaled, maybe framed, encoded, decoded as served."""
    image = Image.fromarray(array_hwc)
    scale = math.exp(rng.uniform(*map(math.log, UPSCALE_RANGE)))
    size = round(image.width * scale)
    image = image.resize((size, size), rng.choice(FILTERS))
    if rng.random() < LETTERBOX_SHARE:
        frame = Image.new("RGB", (round(size * rng.uniform(1.25, 1.78)), size),
                          tuple(rng.randrange(256) for _ in range(3)))
        frame.paste(image, ((frame.width - size) // 2, 0))
        image = frame
    fmt = rng.choice(FORMATS)
    quality = {} if fmt == "PNG" else {"quality": rng.randint(*QUALITY_RANGE)}
    return decode_image(encode_image(image, fmt, **ENCODER_OPTIONS[fmt], **quality))


def _round_trips(job):
    arrays, seed = job
    rng = random.Random(seed)
    return np.stack([[client_round_trip(a, rng) for a in arrays] for _ in range(BANK_COPIES)])


def build_client_bank(images: torch.Tensor, seed: int = 0, workers: int = 2, chunk: int = 500) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> uint8 (BANK_COPIES, N, 3, 32, 32) of random round trips; each chunk
    has its own seed, so the bank does not depend on the number of workers."""
    arrays = images.permute(0, 2, 3, 1).numpy()
    jobs = [(arrays[i:i + chunk], seed * 1_000_003 + i) for i in range(0, len(arrays), chunk)]
    with ProcessPoolExecutor(workers) as pool:
        parts = list(pool.map(_round_trips, jobs))
    return torch.from_numpy(np.concatenate(parts, axis=1)).permute(0, 1, 4, 2, 3).contiguous()


def cached_client_bank(images: torch.Tensor, cache_dir, seed: int = 0, workers: int = 2) -> torch.Tensor:
    """`build_client_bank`, cached by the images' content and the seed."""
    path = cache_dir / f"client-bank-{content_key(images, f'bank{BANK_FORMAT}:{seed}')}.safetensors"
    return cached_tensors(path, lambda: {"bank": build_client_bank(images, seed, workers)})["bank"]


def client_mix(split: Split, bank: torch.Tensor, share: float, seed: int, epoch: int) -> Split:
    """The split with a random `share` of its images swapped for one of their round trips."""
    generator = torch.Generator().manual_seed(seed * 7907 + epoch)
    swap = torch.rand(len(split), generator=generator) < share
    copy = torch.randint(0, len(bank), (len(split),), generator=generator)
    swapped = bank[copy, torch.arange(len(split))]
    return Split(torch.where(swap.view(-1, 1, 1, 1), swapped, split.images), split.labels)


# ---- natural-photo changes, batched on the training device ----

def _chosen(n, share, generator):
    return torch.rand(n, generator=generator, device=generator.device) < share


def _uniform(n, low, high, generator):
    return low + (high - low) * torch.rand(n, generator=generator, device=generator.device)


def random_resized_crop(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A random region (CROP_SCALE of the area, CROP_RATIO aspect) of the chosen images, resized
    back to full size with bilinear sampling; the others are left as they are."""
    n = len(x)
    area = _uniform(n, *CROP_SCALE, generator)
    log_ratio = _uniform(n, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), generator)
    width = (area * log_ratio.exp()).sqrt().clamp(max=1)
    height = (area / log_ratio.exp()).sqrt().clamp(max=1)
    keep = ~_chosen(n, share, generator)
    width, height = width.masked_fill(keep, 1.0), height.masked_fill(keep, 1.0)
    centre_x = (1 - width) * _uniform(n, -1, 1, generator)
    centre_y = (1 - height) * _uniform(n, -1, 1, generator)
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = width, centre_x, height, centre_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast and saturation of the chosen images scaled by 1 +/- JITTER; a
    GREY_SHARE of them turned grey. `x` is in 0..1."""
    n = len(x)
    chosen = _chosen(n, share, generator).view(n, 1, 1, 1)
    brightness, contrast, saturation = (_uniform(n, 1 - JITTER, 1 + JITTER, generator).view(n, 1, 1, 1)
                                        for _ in range(3))
    grey_weights = torch.tensor(GREY_WEIGHTS, device=x.device).view(1, 3, 1, 1)
    out = x * brightness
    grey = (out * grey_weights).sum(1, keepdim=True)
    out = (out - grey.mean((2, 3), keepdim=True)) * contrast + grey.mean((2, 3), keepdim=True)
    grey = (out * grey_weights).sum(1, keepdim=True)
    out = grey + (out - grey) * saturation
    to_grey = _chosen(n, GREY_SHARE, generator).view(n, 1, 1, 1)
    out = torch.where(to_grey, (out * grey_weights).sum(1, keepdim=True).expand_as(out), out)
    return torch.where(chosen, out.clamp(0, 1), x)


def blur_and_noise(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """The chosen images blurred (Gaussian, BLUR_SIGMA) and given sensor noise (NOISE_SIGMA),
    one sigma each per image, in one grouped convolution. `x` is in 0..1."""
    n, c, h, w = x.shape
    chosen = _chosen(n, share, generator)
    sigma = _uniform(n, *BLUR_SIGMA, generator).view(n, 1)
    radius = math.ceil(3 * BLUR_SIGMA[1])
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype).view(1, -1)
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    identity = (taps == 0).to(x.dtype).expand(n, -1)
    kernel = torch.where(chosen.view(n, 1), kernel / kernel.sum(1, keepdim=True), identity)
    kernel = kernel.repeat_interleave(c, 0)  # one kernel per image, shared by its channels
    flat = x.reshape(1, n * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(n * c, 1, -1, 1), groups=n * c)
    noise_sigma = _uniform(n, *NOISE_SIGMA, generator) * chosen
    noise = torch.randn(x.shape, generator=generator, device=x.device) * noise_sigma.view(n, 1, 1, 1)
    return (flat.view(n, c, h, w) + noise).clamp(0, 1)


def cutout(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """A CUTOUT_SIZE square of the chosen images set to zero (the mean, on normalised input)."""
    n, _, h, w = x.shape
    chosen = _chosen(n, share, generator).view(n, 1, 1)
    top = torch.randint(-CUTOUT_SIZE // 2, h - CUTOUT_SIZE // 2, (n, 1, 1), generator=generator, device=x.device)
    left = torch.randint(-CUTOUT_SIZE // 2, w - CUTOUT_SIZE // 2, (n, 1, 1), generator=generator, device=x.device)
    rows = torch.arange(h, device=x.device).view(1, h, 1)
    cols = torch.arange(w, device=x.device).view(1, 1, w)
    hole = (rows >= top) & (rows < top + CUTOUT_SIZE) & (cols >= left) & (cols < left + CUTOUT_SIZE) & chosen
    return x.masked_fill(hole.unsqueeze(1), 0.0)


@lru_cache(maxsize=2)
def mixing_pictures(device: str) -> torch.Tensor:
    """float 0..1 (4 x PIXMIX_PICTURES, 3, 32, 32): the procedural pictures PixMix mixes in."""
    pictures = torch.cat([procedural_set(name, PIXMIX_PICTURES, seed=PIXMIX_SEED) for name in PIXMIX_SOURCES])
    return pictures.to(device).float() / 255


def _pixmix_weights(n, generator):
    """PixMix's get_ab per image: (a, b) = (Beta(beta, 1), Beta(1, beta)) or (1 + Beta(1, beta),
    -Beta(1, beta)), each half the time. Beta(beta, 1) is u ** (1 / beta) and Beta(1, beta) is
    1 - u ** (1 / beta) for u uniform, so the draws follow the batch's generator."""
    def beta_1_b():
        return 1 - torch.rand(n, generator=generator, device=generator.device) ** (1 / PIXMIX_BETA)
    blend = _chosen(n, 0.5, generator)
    a = torch.where(blend, torch.rand(n, generator=generator, device=generator.device) ** (1 / PIXMIX_BETA),
                    1 + beta_1_b())
    b = torch.where(blend, beta_1_b(), -beta_1_b())
    return a.view(n, 1, 1, 1), b.view(n, 1, 1, 1)


def pixmix(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """The chosen images mixed 0..PIXMIX_ROUNDS times, each round with a random procedural
    picture or, half the time, the image's own mirror, by PixMix's additive or multiplicative
    mixing; the label stays the image's. x is float 0..1 (N, 3, H, W). Only the chosen rows are
    computed: four rounds over a whole 2,000-image batch took 1.5 s on 2 EPYC cores."""
    rows = _chosen(len(x), share, generator).nonzero().flatten()
    n = len(rows)
    pictures = mixing_pictures(str(x.device))
    rounds = torch.randint(0, PIXMIX_ROUNDS + 1, (n,), generator=generator, device=x.device)
    mixed = original = x[rows]
    for r in range(int(rounds.max()) if n else 0):
        picked = pictures[torch.randint(len(pictures), (n,), generator=generator, device=x.device)]
        partner = torch.where(_chosen(n, 0.5, generator).view(n, 1, 1, 1), picked, original.flip(3))
        a, b = _pixmix_weights(n, generator)
        added = (a * (2 * mixed - 1) + b * (2 * partner - 1) + 1) / 2
        multiplied = (2 * mixed) ** a * (2 * partner).clamp_min(1e-37) ** b / 2
        step = torch.where(_chosen(n, 0.5, generator).view(n, 1, 1, 1), added, multiplied).clamp(0, 1)
        mixed = torch.where((rounds > r).view(n, 1, 1, 1), step, mixed)
    return x.index_copy(0, rows, mixed)


def photo_augment(images: torch.Tensor, config: dict, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float 0..255 with the config's shares of crop, colour, blur/noise and
    PixMix (cutout acts on the normalised batch, see `cutout`). The batch comes back untouched when
    all are 0, so recipes without them train bit for bit as before."""
    shares = (config["crop_aug"], config["colour_aug"], config["blur_aug"], config.get("pixmix_aug", 0.0))
    steps = [(share, step) for share, step in zip(shares, (random_resized_crop, colour_jitter, blur_and_noise,
                                                             pixmix)) if share]
    if not steps:
        return images
    x = images.float() / 255
    for share, step in steps:
        x = step(x, share, generator)
    return x * 255


# ---- synthetic outliers for outlier exposure, made from the batch's own images ----

OUTLIER_PATCH = 8        # patch-shuffled outliers: the image cut into 8x8 tiles, tiles permuted
OUTLIER_CROP = (2, 6)    # magnified outliers: a 2-6 px square blown up to the full 32 px


def _patch_shuffled(x, generator):
    n, c, h, w = x.shape
    p = OUTLIER_PATCH
    tiles = x.unfold(2, p, p).unfold(3, p, p).reshape(n, c, -1, p, p)
    order = torch.rand(n, tiles.shape[2], generator=generator, device=x.device).argsort(1)
    tiles = tiles[torch.arange(n, device=x.device).view(n, 1), :, order].permute(0, 2, 1, 3, 4)
    grid = tiles.reshape(n, c, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5)
    return grid.reshape(n, c, h, w)


def _pixel_shuffled(x, generator):
    n, c, h, w = x.shape
    order = torch.rand(n, h * w, generator=generator, device=x.device).argsort(1)
    flat = x.reshape(n, c, h * w)
    return flat.gather(2, order.view(n, 1, -1).expand(n, c, -1)).view(n, c, h, w)


def _magnified(x, generator):
    n = len(x)
    side = torch.randint(OUTLIER_CROP[0], OUTLIER_CROP[1] + 1, (n,), generator=generator, device=x.device)
    scale = side.float() / x.shape[-1]
    theta = torch.zeros(n, 2, 3, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    theta[:, :, 2] = (1 - scale).view(n, 1) * _uniform(2 * n, -1, 1, generator).view(n, 2)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def synthetic_outliers(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) training images -> float 0..255 images that are none of the classes:
    a third patch-shuffled (object parts in the wrong places), a third pixel-shuffled (the
    colours of a photo, no shapes), a third a magnified few-pixel crop (flat colour and blur).
    Made from training images only, so the far-out sets (ml/data/outliers.py) stay unseen."""
    x = images.float()
    kind = torch.randint(0, 3, (len(x),), generator=generator, device=x.device).view(-1, 1, 1, 1)
    out = torch.where(kind == 0, _patch_shuffled(x, generator), _pixel_shuffled(x, generator))
    return torch.where(kind == 2, _magnified(x, generator), out)


# ---- resampling twins for the consistency loss ----

# An upload scaled up by a client and decoded by ml.data.images (area averaging, BOX) comes back as
# a mildly low-passed copy of the image, and that alone changes a few percent of the answers, as
# many as the suite's worst variants (docs/experiments/2026-12-02-consistency-loss.md). Training on
# such copies with their label (serving_aug) does not ask the answers to agree; the consistency
# loss does.
RESAMPLE_FACTORS = (2, 3, 4)
RESAMPLE_MODES = ("bilinear", "bicubic")


def resampled(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The normalised batch upscaled xk (bilinear or bicubic; k and the filter drawn once per
    batch) and area-averaged back to its size, as ml.data.images decodes an upscaled upload. Both steps
    are linear, so they commute with the normalisation."""
    k, mode = (choices[torch.randint(len(choices), (1,), generator=generator, device=x.device).item()]
               for choices in (RESAMPLE_FACTORS, RESAMPLE_MODES))
    return F.avg_pool2d(F.interpolate(x, scale_factor=k, mode=mode, align_corners=False), k)


def training_inputs(images: torch.Tensor, config: dict, generator: torch.Generator):
    """The normalised batch the network trains on: the config's photo augmentations, translation
    and cutout; then outlier_share x batch synthetic outliers appended (translated too), then
    resampled twins of the first consistency_share x batch images when the consistency loss is on.
    Returns (batch, number of outliers, number of twins)."""
    x = augment(normalize(photo_augment(images, config, generator)), generator, config["translate"])
    if config["cutout_aug"]:
        x = cutout(x, config["cutout_aug"], generator)
    parts = [x]
    outliers = int(len(images) * config["outlier_share"])
    if outliers:
        parts.append(augment(normalize(synthetic_outliers(images[:outliers], generator)), generator,
                             config["translate"]))
    twins = int(len(images) * config["consistency_share"]) if config["consistency"] else 0
    if twins:
        parts.append(resampled(x[:twins], generator))
    return (torch.cat(parts) if len(parts) > 1 else x), outliers, twins
