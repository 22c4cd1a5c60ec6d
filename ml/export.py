"""Export a model folder for use outside this project, as ONNX or TorchScript, with an export card.

    python -m ml.export --model models/default --format onnx [--out FILE] [--tta LEVEL]
    python -m ml.export --model models/default --format onnx --check --data data

The exported graph is the Predictor's path from the decoded photo on: uint8 (N, 32, 32, 3) RGB in,
then float, NCHW, the card's normalisation, the network with the card's test-time augmentation,
the temperature, softmax and the novelty score; out come `probabilities`, `logits` (calibrated)
and `novelty`. Decoding stays outside (no graph format decodes JPEG or applies EXIF): the export
card says exactly how, step by step, as ml/images.py does it. The card is written next to the file
(`FILE.json`, with the file's sha256) and embedded in it: ONNX `metadata_props["card"]`, or the
TorchScript archive's extra file `card.json`.

`--check` runs the exported file (onnxruntime's CPU provider, or TorchScript) and the PyTorch
Predictor over the validation split the model was trained beside, and fails unless top-1 agrees on
at least PARITY_MIN of the images; the figure goes into the card next to the file.
"""

import argparse
import json
import os
import sys
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from torch import nn

from ml.data import normalize
from ml.evaluate import load_model_split
from ml.images import ALLOWED_FORMATS, DEFAULT_MAX_PIXELS
from ml.modelfile import load_model_dir, load_novelty_bank, sha256_file, write_json_atomic
from ml.models import tta_outputs
from ml.novelty import KNN_K, energy_temperature, kth_neighbour_distance, novelty_scores
from ml.predict import Predictor
from ml.serving_policy import serving_tta

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
EXPORT_CARD_FORMAT = 1
CARD_KEY = "card"  # ONNX metadata_props key; TorchScript extra file CARD_KEY + ".json"
INPUT_NAME = "image"
OUTPUT_NAMES = ("probabilities", "logits", "novelty")
# The TorchScript-based ONNX exporter (dynamo=False) needs only the `onnx` package; the dynamo one
# also needs onnxscript. 17: every op the graph uses exists there, and onnxruntime 1.20+ runs it.
ONNX_OPSET = 17
PARITY_MIN = 0.999  # share of validation images whose top-1 must match PyTorch's
CHECK_BATCH = 250


class ExportedClassifier(nn.Module):
    """What the exported graph computes, from the decoder's output on (see the module docstring)."""

    def __init__(self, model, card, tta: int, bank=None):
        super().__init__()
        self.model, self.tta = model, tta
        self.norm = (card["normalization"]["mean"], card["normalization"]["std"])
        self.temperature = float(card.get("temperature", 1.0))
        self.novelty_method = (card.get("novelty") or {}).get("method", "msp")
        self.energy_temperature = energy_temperature(card.get("novelty") or {})
        self.register_buffer("bank", bank if bank is not None else torch.zeros(0))

    def forward(self, image):
        x = normalize(image.permute(0, 3, 1, 2), *self.norm)
        logits, features = tta_outputs(self.model, x, self.tta)
        logits = logits / self.temperature
        if self.novelty_method == "knn":
            novelty = kth_neighbour_distance(features, self.bank)
        else:
            novelty = novelty_scores(self.novelty_method, logits, temperature=self.energy_temperature)
        return logits.softmax(1), logits, novelty


def tta_spec(level: int) -> dict:
    """The views of ml.models.tta_outputs at `level` and how their logits are combined."""
    views = ["plain: the 32x32 input"]
    combine = "the plain view's logits"
    if level >= 1:
        views.append("mirror: the input flipped left-right")
        combine = "mean(plain, mirror)"
    if level >= 2:
        views += ["up-left: the input reflect-padded by 1 pixel on each side (34x34), rows 0-31 and columns 0-31",
                  "up-left mirrored", "down-right: the same padded input, rows 2-33 and columns 2-33",
                  "down-right mirrored"]
        combine = ("0.5 * mean(plain, mirror) + 0.25 * mean(up-left, up-left mirrored) "
                   "+ 0.25 * mean(down-right, down-right mirrored)")
    return {"level": level, "in_graph": True, "views": views,
            "combine": f"{combine}, on the normalised input, before the temperature"}


def preprocessing_spec(size: int) -> dict:
    """ml.images.decode_image, step by step: what a client does before the graph."""
    return {
        "reference": "ml/images.py decode_image (Pillow)",
        "decode": f"Pillow Image.open; formats {sorted(ALLOWED_FORMATS)}; at most {DEFAULT_MAX_PIXELS:,} "
                  "pixels (refused from the header); animations: the first frame",
        "jpeg_draft": f"JPEG only: image.draft('RGB', ({2 * size}, {2 * size})) before loading, i.e. "
                      "DCT-domain downscaling by 1/2..1/8 while both sides stay at least "
                      f"{2 * size} pixels",
        "exif_transpose": "PIL.ImageOps.exif_transpose, after loading",
        "colour": "16-bit greyscale: the top 8 bits (shift right by 8 when any value exceeds 255); "
                  "palette with transparency: to RGBA; RGBA/LA/PA: alpha-composited onto opaque white; "
                  "then Image.convert('RGB')",
        "resize": {"shorter_side": size, "longer_side": f"int({size} * longer / shorter), truncated",
                   "filter_when_shrinking": "Image.BOX (area average)",
                   "filter_when_enlarging": "Image.BILINEAR",
                   "skipped_when": f"the image is already {size}x{size}"},
        "crop": {"type": "centre", "size": [size, size],
                 "offset": f"left = round((width - {size}) / 2), top = round((height - {size}) / 2), "
                           "Python's round"},
        "letterbox": False,
        "array": f"numpy uint8 (height {size}, width {size}, 3 RGB), stacked into a batch (N, {size}, {size}, 3)",
    }


def website_policy(card: dict) -> dict:
    """How the website runs the same model (ml/serving_policy.py): its TTA policy and, per kind of
    device, the precision that passed the agreement gate against fp32."""
    level, confident_at = serving_tta(card)
    gates = (card.get("serving") or {}).get("precision") or {}
    return {"level": level, "extra_views_below_confidence": confident_at,
            "precision": {device: {"dtype": gate["dtype"] if gate["passed"] else "fp32",
                                   "top1_agreement_with_fp32": gate.get("agreement")}
                          for device, gate in gates.items()}}


def export_card(card: dict, fmt: str, tta: int) -> dict:
    size = card.get("input_size", 32)
    norm = card["normalization"]
    novelty = card.get("novelty") or {}
    method = novelty.get("method", "msp")
    t = energy_temperature(novelty)
    scores = {"msp": "minus the highest probability",
              "energy": f"minus {t:g} * logsumexp(logits / {t:g})" if t != 1 else "minus logsumexp(logits)",
              "knn": "distance of the L2-normalised penultimate features (plain view) to their "
                     f"{KNN_K}th nearest neighbour in a bank of training features, embedded in the graph"}
    return {
        "export_format": EXPORT_CARD_FORMAT, "format": fmt,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"name": card.get("name"), "version": card.get("version"), "arch": card["arch"],
                  "weights_sha256": card["weights_sha256"]},
        "classes": card["classes"],
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", size, size, 3],
                  "layout": "NHWC, RGB, 0-255: the decoded photo (preprocessing), not normalised"},
        "outputs": {"probabilities": "(batch, classes) softmax of the calibrated logits",
                    "logits": "(batch, classes) TTA-combined logits divided by the temperature",
                    "novelty": "(batch,) higher = less like the training images"},
        "preprocessing": preprocessing_spec(size),
        "in_graph": ["cast to float32", "NHWC to NCHW", "normalisation", "network with the TTA views",
                     "divide by the temperature", "softmax", "novelty"],
        "normalization": {"mean": norm["mean"], "std": norm["std"],
                          "formula": "(pixel - 255 * mean[c]) / (255 * std[c]), pixel in 0..255"},
        "tta": dict(tta_spec(tta), website_level=card.get("tta", 0), website_policy=website_policy(card)),
        "temperature": float(card.get("temperature", 1.0)),
        "novelty": {"method": method, "score": scores[method], "threshold": novelty.get("threshold"),
                    "rule": "recognised when novelty <= threshold (always, without a threshold); "
                            "otherwise the answer is 'none of these' and the label only the closest guess"},
        "answer": "label = classes[argmax(probabilities)], confidence = its probability, the top 5 by probability",
    }


def build_exported(model_dir, tta=None):
    """(ExportedClassifier in eval mode, the model's card) for a model folder; `tta` None: the card's level."""
    model, card = load_model_dir(model_dir)
    level = card.get("tta", 0) if tta is None else tta
    bank = load_novelty_bank(model_dir, card)
    module = ExportedClassifier(model, card, level, bank).eval()
    return module, card


def example_input(size: int) -> torch.Tensor:
    return torch.zeros(1, size, size, 3, dtype=torch.uint8)


def write_onnx(module, card: dict, path):
    example = example_input(card["input"]["shape"][1])
    batch_axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # Expected and harmless here: the TorchScript-based exporter's deprecation notice, the
        # tracer's note that normalize()'s torch.tensor(mean/std) is recorded as a constant (it is
        # one), and constant folding skipping the flip's step -1 slices.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Constant folding")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=batch_axes)
    proto = onnx.load(str(path))
    proto.doc_string = "CIFAR-10 photo classifier; the metadata's 'card' says how to prepare its input"
    onnx.helper.set_model_props(proto, {CARD_KEY: json.dumps(card)})
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def write_torchscript(module, card: dict, path):
    example = example_input(card["input"]["shape"][1])
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # constants, as for ONNX
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation; docs/export.md says so
        traced = torch.jit.trace(module, (example,))
        torch.jit.save(traced, str(path), _extra_files={CARD_KEY + ".json": json.dumps(card)})


def load_torchscript(path, extra_files: dict = None):
    """A TorchScript export from a path or a binary file; `extra_files`, when given, receives its
    card as the "card.json" entry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit's deprecation, as above
        return torch.jit.load(path, _extra_files=extra_files or {})


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript}


def default_out(card: dict, fmt: str) -> Path:
    return Path(f"{card.get('name', 'model')}-{card.get('version', 'unknown')}{FORMATS[fmt]}")


def card_path(path) -> Path:
    return Path(f"{path}.json")


def write_card(path, card: dict):
    write_json_atomic(card_path(path), card)
    os.chmod(card_path(path), 0o644)  # mkstemp makes 0600 files


def export_model(model_dir, fmt: str, out=None, tta=None) -> Path:
    """Write the export of `model_dir` to `out` and its card to `out`.json, each atomically (a
    temporary file in the same folder, then a rename); returns `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {sorted(FORMATS)}")
    module, model_card = build_exported(model_dir, tta)
    card = export_card(model_card, fmt, module.tta)
    out = Path(out) if out else default_out(model_card, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    os.close(fd)
    try:
        WRITERS[fmt](module, card, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        write_card(out, dict(card, file=out.name, sha256=sha256_file(tmp)))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def onnx_session(path, threads: int = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exported_runner(path, fmt: str):
    """A function: uint8 (N, H, W, 3) array -> probabilities (N, classes), running the exported file."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda images: session.run(["probabilities"], {INPUT_NAME: images})[0]
    module = load_torchscript(path)

    def run(images):
        with torch.inference_mode():
            return module(torch.from_numpy(images))[0].numpy()
    return run


def check_parity(path, fmt: str, model_dir, data_root, val_size=None) -> dict:
    """Top-1 agreement between the exported file and the PyTorch Predictor, at the export's TTA
    level, over the model's validation split."""
    card = json.loads(card_path(path).read_text())
    predictor = Predictor(model_dir, "cpu")
    # the reference is the export's own computation: fp32, every view of its TTA level (the
    # server's bf16 and adaptive policy are gated against exactly that; see ml/serving_policy.py)
    predictor.tta, predictor.confident_at, predictor.amp_dtype = card["tta"]["level"], None, None
    split = load_model_split(data_root, predictor.card, val_size).val
    images = split.images.permute(0, 2, 3, 1).contiguous().numpy()
    run = exported_runner(path, fmt)
    agree, max_diff = 0, 0.0
    for start in range(0, len(images), CHECK_BATCH):
        batch = images[start:start + CHECK_BATCH]
        exported = run(batch)
        reference = predictor.probabilities(list(batch))[0].numpy()
        agree += int((exported.argmax(1) == reference.argmax(1)).sum())
        max_diff = max(max_diff, float(np.abs(exported - reference).max()))
    return {"images": len(images), "top1_agreement": agree / len(images), "max_probability_difference": max_diff,
            "runtime": f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider" if fmt == "onnx"
            else f"torch {torch.__version__} TorchScript", "reference": "ml.predict.Predictor, fp32, CPU"}


def main(argv=None):
    parser = argparse.ArgumentParser(description="Export a model folder as ONNX or TorchScript, "
                                     "with a card stating its exact preprocessing.")
    parser.add_argument("--model", default="models/default", help="model folder (weights + card.json)")
    parser.add_argument("--format", default="onnx", choices=sorted(FORMATS), help="export format")
    parser.add_argument("--out", default=None, help="output file (default: NAME-VERSION.onnx or .pt here); "
                        "its card goes to OUT.json")
    parser.add_argument("--tta", type=int, default=None, choices=[0, 1, 2],
                        help="test-time augmentation baked into the graph (default: the card's, as the website)")
    parser.add_argument("--check", action="store_true",
                        help="then measure top-1 parity with PyTorch on the validation split (needs --data)")
    parser.add_argument("--data", default="data", help="dataset root for --check")
    parser.add_argument("--val-size", type=int, default=None,
                        help="validation images for --check (default: the card's, so the split matches training)")
    args = parser.parse_args(argv)
    out = export_model(args.model, args.format, args.out, args.tta)
    print(f"wrote {out} and {card_path(out)}")
    if args.check:
        parity = check_parity(out, args.format, args.model, args.data, args.val_size)
        card = json.loads(card_path(out).read_text())
        write_card(out, dict(card, parity=parity))
        print(json.dumps(parity, indent=1))
        if parity["top1_agreement"] < PARITY_MIN:
            sys.exit(f"{out}: top-1 agrees with PyTorch on {parity['top1_agreement']:.2%} of the images, "
                     f"under {PARITY_MIN:.1%}")


if __name__ == "__main__":
    main()
