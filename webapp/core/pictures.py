"""PNG encoding of pixel arrays, for what the web app itself draws or keeps: the model's 32x32
input shown in answers and kept with a feedback photo, saliency overlays."""

import io

from PIL import Image


def png_bytes(array) -> bytes:
    """An HxWx3 (or HxW) uint8 array as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()
