"""Far-out sets: images that are none of the ten classes, made offline, decoded as uploads are.

Procedural sets are drawn here from a seed (noise, solid colours, textures, rendered text,
screenshot-like pages); photos shipped inside Python packages (scikit-image's data module,
scikit-learn's sample images and digits) are exported to a folder by
`scripts/export_package_photos.py` in a virtual environment of its own, and cut into crops here.
Every image is encoded as PNG and decoded by `ml.data.images.decode_image`, as an upload is.
"""

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from ml.data.images import IMAGE_SUFFIXES, decode_image, encode_image

WORDS = ("invoice total account settings cancel submit password search results page loading "
         "welcome error network download upload profile privacy terms help contact").split()


def _decoded(image: Image.Image) -> np.ndarray:
    return decode_image(encode_image(image, "PNG", compress_level=1))


def _colour(rng):
    return tuple(rng.randrange(256) for _ in range(3))


def noise_image(rng: random.Random, size=128) -> Image.Image:
    """Uniform or Gaussian RGB noise, at a random grain size."""
    grain = rng.choice([1, 2, 4, 8])
    array = np.random.default_rng(rng.randrange(2 ** 32)).random((size // grain, size // grain, 3))
    if rng.random() < 0.5:
        array = np.clip(0.5 + 0.2 * np.random.default_rng(rng.randrange(2 ** 32)).standard_normal(array.shape), 0, 1)
    return Image.fromarray((array * 255).astype(np.uint8)).resize((size, size), Image.NEAREST)


def solid_image(rng: random.Random, size=128) -> Image.Image:
    return Image.new("RGB", (size, size), _colour(rng))


def texture_image(rng: random.Random, size=128) -> Image.Image:
    """Stripes, checkerboards, dots or blurred blobs in two random colours."""
    kind = rng.choice(["stripes", "checks", "dots", "blobs"])
    image = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(image)
    ink, period = _colour(rng), rng.randint(4, 24)
    if kind == "stripes":
        for x in range(-size, 2 * size, period):
            draw.line([(x, 0), (x + rng.randint(-size, size), size)], fill=ink, width=max(1, period // 2))
    elif kind == "checks":
        for y in range(0, size, period):
            for x in range((y // period) % 2 * period, size, 2 * period):
                draw.rectangle([x, y, x + period - 1, y + period - 1], fill=ink)
    elif kind == "dots":
        for y in range(0, size, period):
            for x in range(0, size, period):
                draw.ellipse([x, y, x + period // 2, y + period // 2], fill=ink)
    else:
        for _ in range(12):
            x, y, r = rng.randrange(size), rng.randrange(size), rng.randint(4, 30)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=_colour(rng))
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(1, 6)))
    return image


def text_image(rng: random.Random, size=128) -> Image.Image:
    """Lines of words in one colour on another, the way a photo of a note or a sign looks."""
    image = Image.new("RGB", (size, size), _colour(rng))
    draw = ImageDraw.Draw(image)
    ink, y = _colour(rng), rng.randint(0, 10)
    font_size = rng.choice([10, 14, 20, 28])
    while y < size:
        draw.text((rng.randint(0, 10), y), " ".join(rng.choice(WORDS) for _ in range(4)), fill=ink,
                  font_size=font_size)
        y += font_size + rng.randint(2, 8)
    return image


def screenshot_image(rng: random.Random, size=(192, 128)) -> Image.Image:
    """A page-like screenshot: a title bar, panels, buttons and lines of text."""
    width, height = size
    image = Image.new("RGB", size, rng.choice([(255, 255, 255), (245, 245, 245), (30, 30, 30)]))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, width, rng.randint(12, 24)], fill=_colour(rng))
    for _ in range(rng.randint(2, 5)):
        x, y = rng.randrange(width - 40), rng.randrange(20, height - 20)
        draw.rectangle([x, y, x + rng.randint(20, 90), y + rng.randint(10, 40)], outline=_colour(rng),
                       fill=_colour(rng) if rng.random() < 0.5 else None)
    for y in range(30, height, 12):
        draw.text((8, y), " ".join(rng.choice(WORDS) for _ in range(3)), fill=(90, 90, 90), font_size=9)
    return image


PROCEDURAL_SETS = {"noise": noise_image, "solid colours": solid_image, "textures": texture_image,
                   "rendered text": text_image, "screenshots": screenshot_image}


def procedural_set(name: str, count: int, seed: int = 0) -> torch.Tensor:
    """uint8 (count, 3, 32, 32) of PROCEDURAL_SETS[name], decoded as uploads are."""
    rng = random.Random(f"{name}:{seed}")
    arrays = [_decoded(PROCEDURAL_SETS[name](rng)) for _ in range(count)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def photo_crops(folder, crops_per_photo: int = 12, seed: int = 0) -> torch.Tensor:
    """uint8 (N, 3, 32, 32): the whole of each photo in `folder` and random square crops of it
    (a quarter to all of its shorter side), decoded as uploads are."""
    rng = random.Random(seed)
    arrays = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        photo = Image.open(path).convert("RGB")
        arrays.append(_decoded(photo))
        for _ in range(crops_per_photo):
            side = int(min(photo.size) * rng.uniform(0.25, 1.0))
            left, top = rng.randint(0, photo.width - side), rng.randint(0, photo.height - side)
            arrays.append(_decoded(photo.crop((left, top, left + side, top + side))))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
