"""Classify photos with an exported ONNX model, outside this project: only onnxruntime, numpy and Pillow.

    python examples/onnx_client.py cifar10-airnet-VERSION.onnx photo.jpg other.png

`decode` is ml/data/images.py's decoder as the export card states it (docs/export.md);
tests/test_ml_export.py checks that `decode` and `classify` give the site's answers.
"""

import json
import sys

import numpy as np
import onnxruntime
from PIL import Image, ImageOps


def decode(path, size=32):
    image = Image.open(path)
    if image.format == "JPEG":
        image.draft("RGB", (2 * size, 2 * size))  # decode large JPEGs at reduced scale, as the site
    image.seek(0)                                   # the first frame of an animation
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I"):                  # 16-bit greyscale: the top 8 bits
        pixels = np.asarray(image, dtype=np.uint32)
        image = Image.fromarray((pixels >> (8 if pixels.max(initial=0) > 255 else 0)).astype(np.uint8), "L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):  # alpha onto white
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    image = image.convert("RGB")
    width, height = image.size
    if (width, height) != (size, size):             # shorter side to 32, then the centre square
        new_size = (size, int(size * height / width)) if width <= height else (int(size * width / height), size)
        image = image.resize(new_size, Image.BOX if min(width, height) > size else Image.BILINEAR)
        left, top = round((image.width - size) / 2), round((image.height - size) / 2)
        image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8)


def classify(model_file, photos):
    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["card"])
    probabilities, _, novelty = session.run(None, {"image": np.stack([decode(p) for p in photos])})
    threshold = card["novelty"]["threshold"]
    answers = []
    for p, n in zip(probabilities, novelty):
        recognised = threshold is None or float(n) <= threshold
        found = candidates(p, card["classes"], card.get("conformal"))
        answers.append({"label": found[0], "confidence": float(p.max()), "candidates": found,
                        "answer": "none" if not recognised else "sure" if len(found) == 1 else "unsure",
                        "recognised": recognised})
    return answers


def candidates(probabilities, classes, sets):
    """The conformal prediction set, most probable first, by the card's rule (its "conformal"
    section): rank r is in when the r highest probabilities + lambda * max(0, r - k_reg) sum to at
    most the threshold; the most probable class always is."""
    order = np.argsort(-probabilities, kind="stable")
    if not sets:
        return [classes[order[0]]]
    ranks = np.arange(1, len(order) + 1)
    scores = np.cumsum(probabilities[order]) + sets["lambda"] * np.maximum(0, ranks - sets["k_reg"])
    size = max(1, int((scores <= sets["threshold"]).sum()))
    return [classes[i] for i in order[:size]]


if __name__ == "__main__":
    for photo, answer in zip(sys.argv[2:], classify(sys.argv[1], sys.argv[2:])):
        print(photo, answer)
