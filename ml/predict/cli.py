"""Classify photos with a model folder.

    python -m ml.predict --model models/default photo.jpg other.png

prints one JSON object per line per image, in order (ml/predict/predictor.py says what an answer
holds); an unreadable file gives a line with "error" and the command exits non-zero after the
others.
"""

import argparse
import json
import sys

from ml.data.images import ImageError
from ml.predict.predictor import Predictor


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m ml.predict",
                                     description="Classify images; prints one JSON line per image.")
    parser.add_argument("--model", default="models/default", help="model folder")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, WebP, GIF, BMP)")
    args = parser.parse_args(argv)
    predictor = Predictor(args.model, args.device)
    decoded, failures = {}, 0
    for i, path in enumerate(args.images):
        try:
            decoded[i] = predictor.decode(path)
        except (ImageError, OSError) as error:
            decoded[i] = error
    good = [i for i, v in decoded.items() if not isinstance(v, Exception)]
    results = dict(zip(good, predictor.predict_arrays([decoded[i] for i in good])))
    for i, path in enumerate(args.images):
        if i in results:
            print(json.dumps({"file": path, **results[i]}))
        else:
            failures += 1
            print(json.dumps({"file": path, "error": str(decoded[i])}))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
