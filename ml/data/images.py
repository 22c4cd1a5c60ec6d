"""The one photo decoder: bytes or a path in, a 32x32 RGB uint8 array out; and the one encoder,
for the images ml and the web app make themselves (PNG thumbnails, the client round trips).

The decoder is used by training on image folders, by `ml.predict` and so by the web page and the
API alike. Pixels are counted from the header before any decoding, so a decompression bomb costs
nothing.
"""

import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "GIF", "BMP"}
DEFAULT_MAX_PIXELS = 40_000_000  # about a 50 MP photo; larger is refused before decoding
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp"}


class ImageError(ValueError):
    """An input that cannot be classified; `code` says why (a server maps it to its status)."""
    code = "bad_image"


class UnsupportedImageError(ImageError):
    code = "unsupported_media_type"


class CorruptImageError(ImageError):
    code = "corrupt_image"


class ImageTooLargeError(ImageError):
    code = "image_too_large"


def open_image(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `source` (bytes, a path or a binary file) and check format and size from the header only."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise CorruptImageError("the file is empty")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)) and os.path.getsize(source) == 0:
        raise CorruptImageError("the file is empty")
    try:
        image = Image.open(source, formats=sorted(ALLOWED_FORMATS))
    except UnidentifiedImageError:
        raise UnsupportedImageError(
            "not an image in an accepted format (JPEG, PNG, WebP, GIF or BMP)") from None
    except Image.DecompressionBombError:  # Pillow's own guard, for sizes far beyond ours
        raise ImageTooLargeError(f"the image has more pixels than the limit of {max_pixels:,}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise CorruptImageError(f"the image cannot be read: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise CorruptImageError("the image has no pixels")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels, more than the limit of {max_pixels:,}")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Apply EXIF orientation, flatten alpha onto white, and convert any mode to 8-bit RGB. The
    orientation is applied to `image` itself, and an RGB image comes back as it is: no full-size
    copies of every upload (they were 2.5% of a served worker's time)."""
    ImageOps.exif_transpose(image, in_place=True)
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit greyscale: keep the top 8 bits instead of clipping everything above 255 to white
        array = np.asarray(image, dtype=np.uint32)
        shift = 8 if array.max(initial=0) > 255 else 0
        image = Image.fromarray((array >> shift).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image if image.mode == "RGB" else image.convert("RGB")


def resize_center_crop(image: Image.Image, size: int = 32) -> Image.Image:
    """Resize(size) + CenterCrop(size): shorter side to `size`, then the centre square.

    Downscaling averages each output pixel's footprint (Pillow's BOX, OpenCV's INTER_AREA) rather
    than antialiased bilinear: bilinear's triangle spans two footprints and blurs, and an upscaled
    photo sent back then gets another answer about twice as often
    (docs/experiments/2026-12-02-decoder-area-averaging.md).
    Images smaller than `size` are still enlarged bilinearly."""
    width, height = image.size
    if (width, height) != (size, size):
        if width <= height:
            new_size = (size, int(size * height / width))
        else:
            new_size = (int(size * width / height), size)
        image = image.resize(new_size, Image.BOX if min(width, height) > size else Image.BILINEAR)
        width, height = image.size
        left = int(round((width - size) / 2.0))
        top = int(round((height - size) / 2.0))
        image = image.crop((left, top, left + size, top + size))
    return image


def encode_image(image, fmt: str = "PNG", **options) -> bytes:
    """A Pillow image or an (H, W, 3) uint8 array as the bytes of a `fmt` file (Pillow's save
    `options`, e.g. quality=90)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def decode_image(source, size: int = 32, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a photo to a (size, size, 3) uint8 RGB array. Raises an ImageError subclass."""
    image = open_image(source, max_pixels)
    try:
        if image.format == "JPEG":
            # Decode large JPEGs at 1/2..1/8 scale: still at least 2*size on each side.
            image.draft("RGB", (2 * size, 2 * size))
        image.seek(0)  # first frame of an animation
        image.load()
        image = resize_center_crop(to_rgb(image), size)
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as error:
        raise CorruptImageError(f"the image is truncated or corrupt: {error}") from None
    return np.asarray(image, dtype=np.uint8)
