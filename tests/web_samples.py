"""Photos and hostile files for the web tests, built with Pillow and the standard library, and
the command-line predictor they are compared with."""

import io
import json
import struct
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ml.data.sources import stratified_split

JPEG_EXIF_ORIENTATION = 0x0112
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def run_ml_predict(model_dir, paths) -> list:
    """What `python -m ml.predict` says about the files at `paths`, one dict per file."""
    out = subprocess.run([sys.executable, "-m", "ml.predict", "--model", str(model_dir), *map(str, paths)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True)
    return [json.loads(line) for line in out.stdout.splitlines()]


def encode(image: Image.Image, fmt: str, **save_args) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    return buffer.getvalue()


def noise_image(size=(96, 64), seed=0, mode="RGB") -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB").convert(mode)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose valid IHDR (correct CRC) claims width x height RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + png_chunk(b"IEND", b""))


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 30), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def sixteen_bit_png() -> bytes:
    ramp = (np.arange(48 * 32, dtype=np.uint16).reshape(32, 48) * 40)
    return encode(Image.fromarray(ramp), "PNG")


def palette_png_with_transparency() -> bytes:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 128, 255] + [0] * (256 * 3 - 9))
    image.paste(1, (0, 0, 20, 40))
    image.paste(2, (20, 0, 40, 20))
    return encode(image, "PNG", transparency=0)


def halves(width=64, height=32) -> Image.Image:
    """Left half red, right half blue: an orientation mistake shows at once."""
    image = Image.new("RGB", (width, height), (220, 0, 0))
    image.paste((0, 0, 220), (width // 2, 0, width, height))
    return image


def exif_rotated_jpeg() -> bytes:
    """halves() stored sideways with EXIF orientation 6: viewers turn it 90 degrees clockwise."""
    exif = Image.Exif()
    exif[JPEG_EXIF_ORIENTATION] = 6
    return encode(halves(), "JPEG", quality=95, exif=exif)


def upright_of_exif_rotated() -> bytes:
    return encode(halves().transpose(Image.Transpose.ROTATE_270), "JPEG", quality=95)


def zip_archive() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", encode(noise_image(), "JPEG"))
    return buffer.getvalue()


def truncated_jpeg() -> bytes:
    data = encode(noise_image((256, 256)), "JPEG", quality=90)
    return data[: len(data) // 2]


SVG_WITH_SCRIPT = (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="100" height="100">'
                   b'<script>alert(document.cookie)</script><rect width="100" height="100"/></svg>')
HEIC_HEADER = (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic"
               + b"\x00\x00\x00\x08free" + bytes(200))


def solid_png(colour=(128, 128, 128), size=(256, 256)) -> bytes:
    """One flat colour: a photo of none of the ten classes."""
    return encode(Image.new("RGB", size, colour), "PNG")


def validation_photos(data_dir, card, per_class=2) -> list:
    """The first `per_class` photos of each class in the model's validation split (data/train held
    out by the card's val_size and split_seed, as ml.data splits an image folder)."""
    files = [sorted((Path(data_dir) / "train" / name).glob("*.jpg")) for name in card["classes"]]
    labels = torch.cat([torch.full((len(f),), c) for c, f in enumerate(files)])
    _, held_out = stratified_split(labels, card["data"]["val_size"], card["data"]["split_seed"])
    every_file = [path for class_files in files for path in class_files]
    chosen, taken = [], {}
    for index in held_out.tolist():
        c = int(labels[index])
        if taken.get(c, 0) < per_class:
            taken[c] = taken.get(c, 0) + 1
            chosen.append(every_file[index])
    return chosen


def good_files() -> dict:
    """name -> (filename, bytes) of inputs that must be classified."""
    return {
        "jpeg": ("photo.jpg", encode(noise_image(), "JPEG")),
        "jpeg named png": ("really-a-jpeg.png", encode(noise_image(seed=1), "JPEG")),
        "animated gif": ("animated.gif", animated_gif()),
        "cmyk jpeg": ("cmyk.jpg", encode(noise_image(mode="CMYK"), "JPEG")),
        "16-bit png": ("deep.png", sixteen_bit_png()),
        "palette png with transparency": ("palette.png", palette_png_with_transparency()),
        "rgba png": ("alpha.png", encode(Image.new("RGBA", (50, 40), (10, 200, 30, 100)), "PNG")),
        "exif rotated": ("rotated.jpg", exif_rotated_jpeg()),
        "1x1": ("dot.png", encode(Image.new("RGB", (1, 1), (0, 128, 255)), "PNG")),
        "4032x3024 photo": ("phone.jpg", encode(Image.new("RGB", (4032, 3024), (90, 140, 60)), "JPEG")),
        "webp": ("photo.webp", encode(noise_image(seed=2), "WEBP")),
        "bmp": ("photo.bmp", encode(noise_image(seed=3), "BMP")),
    }


def bad_files() -> dict:
    """name -> (filename, bytes, status, code) of inputs that must be refused."""
    return {
        "empty": ("empty.jpg", b"", 400, "corrupt_image"),
        "text renamed .jpg": ("notes.jpg", b"just some text, not a photo\n" * 5, 415, "unsupported_media_type"),
        "truncated jpeg": ("cut.jpg", truncated_jpeg(), 400, "corrupt_image"),
        "png claiming 20000x20000": ("bomb.png", png_claiming(20000, 20000), 413, "image_too_large"),
        "svg with script": ("vector.svg", SVG_WITH_SCRIPT, 415, "unsupported_media_type"),
        "heic header": ("IMG_0001.HEIC", HEIC_HEADER, 415, "unsupported_media_type"),
        "html": ("page.html", b"<!doctype html><html><script>alert(1)</script></html>", 415, "unsupported_media_type"),
        "pdf": ("doc.pdf", b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n", 415,
                "unsupported_media_type"),
        "zip archive": ("photos.zip", zip_archive(), 415, "unsupported_media_type"),
    }
