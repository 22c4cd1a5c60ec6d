"""The robustness suite's inputs: validation images as clients send them, and as cameras spoil them.

- Client variants: each image upscaled x3 to x32 with several filters, saved as PNG, WebP and JPEG
  at several qualities, EXIF-rotated, RGBA, CMYK, letterboxed 3:2 and 4:3, then decoded by
  `ml.data.images.decode_image` from the encoded bytes, exactly as an upload is. A model that has only
  seen crisp 32x32 images meets the blur of an upscale-then-antialiased-downscale round trip here.
- Common corruptions: CIFAR-10-C's (Hendrycks & Dietterich, 2019) at its five severities, with its
  parameters for 32x32 images, written in torch (the `imagecorruptions` package pulls in OpenCV and
  scikit-image for the same dozen formulas). JPEG goes through Pillow and `ml.data.images`.

Everything is built from the validation split only and is deterministic for a seed; the client
variants (Pillow work, about 10 ms an image at x32) are cached beside the dataset cache.
"""

import math
import random
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ml.data.augment import client_round_trip
from ml.data.cache import cached_tensors, content_key
from ml.data.images import decode_image, encode_image

SUITE_FORMAT = 3  # bump when a variant or corruption changes, so cached suites are rebuilt
EXIF_ORIENTATION = 0x0112
ROTATE_90_CW_TO_VIEW = 6  # EXIF: the stored pixels must be turned 90 degrees clockwise to view
# (name, upscale factor, resampling filter, format, quality, extra step)
CLIENT_VARIANTS = [
    ("png x3 bilinear", 3, Image.BILINEAR, "PNG", None, None),
    ("png x8 nearest", 8, Image.NEAREST, "PNG", None, None),
    ("png x32 lanczos", 32, Image.LANCZOS, "PNG", None, None),
    ("jpeg q95 x4 bicubic", 4, Image.BICUBIC, "JPEG", 95, None),
    ("jpeg q75 x16 bilinear", 16, Image.BILINEAR, "JPEG", 75, None),
    ("jpeg q60 x32 bicubic", 32, Image.BICUBIC, "JPEG", 60, None),
    ("webp q90 x8 bicubic", 8, Image.BICUBIC, "WEBP", 90, None),
    ("webp q60 x12 lanczos", 12, Image.LANCZOS, "WEBP", 60, None),
    ("exif-rotated jpeg q90 x8", 8, Image.BICUBIC, "JPEG", 90, "exif_rotate"),
    ("rgba png x6", 6, Image.BICUBIC, "PNG", None, "rgba"),
    ("cmyk jpeg q90 x8", 8, Image.BICUBIC, "JPEG", 90, "cmyk"),
    ("letterbox 3:2 png x8", 8, Image.BICUBIC, "PNG", None, "letterbox_3_2"),
    ("letterbox 4:3 jpeg q85 x10", 10, Image.LANCZOS, "JPEG", 85, "letterbox_4_3"),
]
VARIANT_NAMES = [v[0] for v in CLIENT_VARIANTS]
LETTERBOX_FILL = (128, 128, 128)


# ---- client variants ----

def letterbox(image: Image.Image, ratio: float) -> Image.Image:
    """The image centred in a landscape frame `ratio` times as wide as it is tall (phone-gallery
    style); the decoder's centre crop finds the image again, up to rounding."""
    width, height = image.size
    frame = Image.new("RGB", (round(height * ratio), height), LETTERBOX_FILL)
    frame.paste(image, ((frame.width - width) // 2, 0))
    return frame


def encode_client_photo(image: Image.Image, scale: int, resample, fmt: str, quality=None,
                        extra=None) -> bytes:
    """The bytes a client would send for a 32x32 RGB `image`: upscaled, maybe re-framed, encoded."""
    image = image.resize((image.width * scale, image.height * scale), resample)
    options = {} if quality is None else {"quality": quality}
    if extra == "exif_rotate":
        exif = Image.Exif()
        exif[EXIF_ORIENTATION] = ROTATE_90_CW_TO_VIEW
        image = image.transpose(Image.Transpose.ROTATE_90)  # stored turned left; EXIF turns it back
        options["exif"] = exif.tobytes()
    elif extra == "rgba":
        image = image.convert("RGBA")
    elif extra == "cmyk":
        image = image.convert("CMYK")
    elif extra == "letterbox_3_2":
        image = letterbox(image, 3 / 2)
    elif extra == "letterbox_4_3":
        image = letterbox(image, 4 / 3)
    return encode_image(image, fmt, **options)


def _variants_of(array_hwc: np.ndarray) -> np.ndarray:
    """(variants, 32, 32, 3): every client variant of one image, decoded as an upload is."""
    image = Image.fromarray(array_hwc)
    return np.stack([decode_image(encode_client_photo(image, *spec[1:])) for spec in CLIENT_VARIANTS])


def build_client_variants(images: torch.Tensor, workers: int = 2) -> torch.Tensor:
    """uint8 (N, 3, 32, 32) -> uint8 (variants, N, 3, 32, 32), through encode and `decode_image`."""
    arrays = images.permute(0, 2, 3, 1).numpy()
    with ProcessPoolExecutor(workers) as pool:
        decoded = list(pool.map(_variants_of, arrays, chunksize=32))
    return torch.from_numpy(np.stack(decoded, axis=1)).permute(0, 1, 4, 2, 3).contiguous()


def cached_client_variants(images: torch.Tensor, cache_dir, workers: int = 2) -> torch.Tensor:
    """`build_client_variants`, cached by the images' content: the same split is built once."""
    path = cache_dir / f"client-variants-{content_key(images, f'suite{SUITE_FORMAT}')}.safetensors"
    return cached_tensors(path, lambda: {"variants": build_client_variants(images, workers)})["variants"]


# ---- common corruptions (CIFAR-10-C's parameters for 32x32 images) ----

def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return kernel / kernel.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a float (N, C, H, W) batch, reflect padding."""
    kernel = _gaussian_kernel(sigma).to(x)
    r = len(kernel) // 2
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="reflect"), kernel.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def _defocus(x, radius, alias_sigma):
    size = 8
    coords = torch.arange(-size, size + 1, dtype=torch.float32)
    disk = ((coords.view(-1, 1) ** 2 + coords.view(1, -1) ** 2) <= radius ** 2).float()
    disk = (disk / disk.sum())
    keep = disk.sum(0) > 0
    disk = disk[keep][:, keep]  # trim the empty border
    k = disk.shape[0] // 2
    c = x.shape[1]
    blurred = F.conv2d(F.pad(x, (k,) * 4, mode="reflect"), disk.to(x).expand(c, 1, -1, -1), groups=c)
    return gaussian_blur(blurred, alias_sigma)


def _value_scaled(x, new_value):
    """RGB with each pixel's HSV value set to `new_value`, hue and saturation kept."""
    value = x.amax(1, keepdim=True)
    return x * (new_value / value.clamp_min(1e-6))


def _brightness(x, c):
    value = x.amax(1, keepdim=True)
    brighter = _value_scaled(x, (value + c).clamp(0, 1))
    return torch.where(value > 0, brighter, torch.full_like(x, min(c, 1.0)))  # HSV: black turns grey


def _saturate(x, c):
    scale, shift = c
    value = x.amax(1, keepdim=True)
    saturation = (value - x.amin(1, keepdim=True)) / value.clamp_min(1e-6)
    new_saturation = (saturation * scale + shift).clamp(0, 1)
    # with hue and value kept, each channel's distance below the value scales with saturation
    return value - (value - x) * (new_saturation / saturation.clamp_min(1e-6))


def _contrast(x, c):
    mean = x.mean(dim=(2, 3), keepdim=True)  # per channel, as CIFAR-10-C
    return (x - mean) * c + mean


def _pixelate(x, c):
    small = max(1, int(x.shape[-1] * c))
    return F.interpolate(F.interpolate(x, size=small, mode="area"), size=x.shape[-2:], mode="nearest")


def plasma_fractal(generator: torch.Generator, size: int = 32, decay: float = 3.0) -> torch.Tensor:
    """Diamond-square fractal noise in 0..1 (CIFAR-10-C's fog), size a power of two."""
    grid = torch.zeros(size, size)
    step, scale = size, 100.0

    def wibbled(mean):  # CIFAR-10-C's quirk kept: the noise amplitude is scale squared
        return mean + scale * scale * (torch.rand(mean.shape, generator=generator) * 2 - 1)

    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        square = (corners + corners.roll(-1, 0) + corners.roll(-1, 1) + corners.roll((-1, -1), (0, 1))) / 4
        grid[half:size:step, half:size:step] = wibbled(square)
        centres = grid[half:size:step, half:size:step]
        corners = grid[0:size:step, 0:size:step]
        left = (corners + corners.roll(-1, 0) + centres + centres.roll(1, 1)) / 4  # points (i+h, j)
        top = (corners + corners.roll(-1, 1) + centres + centres.roll(1, 0)) / 4   # points (i, j+h)
        grid[half:size:step, 0:size:step] = wibbled(left)
        grid[0:size:step, half:size:step] = wibbled(top)
        step, scale = half, scale / decay
    grid -= grid.min()
    return grid / grid.max()


def _fog(x, c, generator):
    strength, decay = c
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fog = torch.stack([plasma_fractal(generator, x.shape[-1], decay) for _ in range(len(x))]).unsqueeze(1)
    return (x + strength * fog) * peak / (peak + strength)


def _jpeg(x, quality):
    arrays = (x * 255).round().byte().permute(0, 2, 3, 1).numpy()
    out = [decode_image(encode_image(array, "JPEG", quality=quality)) for array in arrays]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255


def _noise(kind):
    def corrupt(x, c, generator):
        if kind == "gaussian":
            return x + c * torch.randn(x.shape, generator=generator)
        if kind == "shot":
            return torch.poisson(x * c, generator=generator) / c
        if kind == "speckle":
            return x + x * c * torch.randn(x.shape, generator=generator)
        hit = torch.rand(x.shape, generator=generator) < c  # impulse: salt and pepper
        salt = torch.rand(x.shape, generator=generator) < 0.5
        return torch.where(hit, salt.float(), x)
    return corrupt


# name -> (function(x, parameter, generator), the five severities' parameters)
CORRUPTIONS = {
    "gaussian noise": (_noise("gaussian"), [0.04, 0.06, 0.08, 0.09, 0.10]),
    "shot noise": (_noise("shot"), [500, 250, 100, 75, 50]),
    "impulse noise": (_noise("impulse"), [0.01, 0.02, 0.03, 0.05, 0.07]),
    "speckle noise": (_noise("speckle"), [0.06, 0.1, 0.12, 0.16, 0.2]),
    "gaussian blur": (lambda x, c, g: gaussian_blur(x, c), [0.4, 0.6, 0.7, 0.8, 1.0]),
    "defocus blur": (lambda x, c, g: _defocus(x, *c), [(0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)]),
    "brightness": (lambda x, c, g: _brightness(x, c), [0.05, 0.1, 0.15, 0.2, 0.3]),
    "contrast": (lambda x, c, g: _contrast(x, c), [0.75, 0.5, 0.4, 0.3, 0.15]),
    "saturate": (lambda x, c, g: _saturate(x, c), [(0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)]),
    "jpeg": (lambda x, c, g: _jpeg(x, c), [80, 65, 58, 50, 40]),
    "pixelate": (lambda x, c, g: _pixelate(x, c), [0.95, 0.9, 0.85, 0.75, 0.65]),
    "fog": (_fog, [(0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)]),
}
SEVERITIES = 5


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8, corrupted by CORRUPTIONS[name] at severity 1..5."""
    function, parameters = CORRUPTIONS[name]
    generator = torch.Generator().manual_seed(seed * 1000 + severity)
    x = function(images.float() / 255, parameters[severity - 1], generator)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def suite_subset(labels: torch.Tensor, size: int, seed: int = 0) -> torch.Tensor:
    """Indices of a fixed, class-balanced subset of the validation split (all of it if smaller)."""
    if size >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = size // len(classes)
    picks = [(labels == c).nonzero().flatten() for c in classes]
    return torch.cat([idx[torch.randperm(len(idx), generator=generator)[:per_class]] for idx in picks]).sort().values


def calibration_mix(val, exclude: torch.Tensor, seed: int = 0):
    """Images for fitting the temperature on photos as they arrive: every validation image outside
    `exclude` (the suite's subsets, so the suite's figures stay out-of-sample) once as a random
    client round trip and once under a random corruption at a random severity. Returns
    (uint8 images, labels)."""
    keep = torch.ones(len(val), dtype=torch.bool)
    keep[exclude] = False
    images, labels = val.images[keep], val.labels[keep]
    if not len(images):  # a validation split no larger than the suite's subsets
        return images, labels
    rng = random.Random(seed)
    arrays = images.permute(0, 2, 3, 1).numpy()
    round_trips = torch.from_numpy(np.stack([client_round_trip(a, rng) for a in arrays])).permute(0, 3, 1, 2)
    generator = torch.Generator().manual_seed(seed)
    kinds = torch.randint(0, len(CORRUPTIONS), (len(images),), generator=generator)
    severities = torch.randint(1, SEVERITIES + 1, (len(images),), generator=generator)
    corrupted = images.clone()
    for k, name in enumerate(CORRUPTIONS):
        for severity in range(1, SEVERITIES + 1):
            chosen = (kinds == k) & (severities == severity)
            if chosen.any():
                corrupted[chosen] = corrupt(images[chosen], name, severity, seed + 1)
    return torch.cat([round_trips.contiguous(), corrupted]), labels.repeat(2)
