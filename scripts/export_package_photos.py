"""Export the sample photos shipped inside scikit-image and scikit-learn as PNG files, for the
far-out novelty sets (`python -m ml.evaluate --novelty --package-photos DIR`).

    make package-photos     # makes .venv-eval with scikit-image and scikit-learn, runs this

Those two packages are needed only here, so they live in their own virtual environment, never in
requirements.txt. Images of one of the ten classes are left out: scikit-image's `chelsea` (a cat)
and `horse` (a horse's silhouette).
"""

import argparse
from pathlib import Path

import numpy as np
import skimage
from PIL import Image
from sklearn.datasets import load_digits, load_sample_images

IN_CLASS = {"chelsea.png", "horse.png"}
DIGITS_EXPORTED = 64  # scikit-learn's 8x8 digits, upscaled as a client would


def skimage_photos():
    folder = Path(skimage.__file__).parent / "data"
    for path in sorted(folder.glob("*")):
        if path.suffix.lower() in {".png", ".jpg"} and path.name not in IN_CLASS:
            yield f"skimage-{path.stem}", Image.open(path)


def sklearn_photos():
    bunch = load_sample_images()
    for name, array in zip(bunch.filenames, bunch.images):
        yield f"sklearn-{Path(name).stem}", Image.fromarray(array)


def digits():
    images = load_digits().images[:DIGITS_EXPORTED]
    for n, array in enumerate(images):
        grey = (255 - array * 255 / 16).astype(np.uint8)  # dark ink on white, as on paper
        yield f"digit-{n:03d}", Image.fromarray(grey, "L").resize((64, 64), Image.NEAREST)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export package sample photos as PNG files.")
    parser.add_argument("--out", default="data/package-photos", help="folder to write (made if missing)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for group in ("photos", "digits"):
        (out / group).mkdir(parents=True, exist_ok=True)
    count = 0
    for name, image in [*skimage_photos(), *sklearn_photos()]:
        image.convert("RGB").save(out / "photos" / f"{name}.png")
        count += 1
    for name, image in digits():
        image.save(out / "digits" / f"{name}.png")
    print(f"wrote {count} photos and {DIGITS_EXPORTED} digits under {out}")


if __name__ == "__main__":
    main()
