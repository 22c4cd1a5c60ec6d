"""Export files: ONNX or TorchScript, each with its export card written next to it (`FILE.json`,
with the file's sha256) and embedded in it: ONNX `metadata_props["card"]`, or the TorchScript
archive's extra file `card.json`; and running such a file.
"""

import json
import warnings
from pathlib import Path

import onnx
import onnxruntime
import torch

from ml.data.files import atomic_path, sha256_file, write_json_atomic
from ml.export.graph import INPUT_NAME, OUTPUT_NAMES, build_exported, example_input, export_card

FORMATS = {"onnx": ".onnx", "torchscript": ".pt"}
CARD_KEY = "card"  # ONNX metadata_props key; TorchScript extra file CARD_KEY + ".json"
# The TorchScript-based ONNX exporter (dynamo=False) needs only the `onnx` package; the dynamo one
# also needs onnxscript. 17: every op the graph uses exists there, and onnxruntime 1.20+ runs it.
ONNX_OPSET = 17


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
    write_json_atomic(card_path(path), card, mode=0o644)


def export_model(model_dir, fmt: str, out=None, tta=None) -> Path:
    """Write the export of `model_dir` to `out` and its card to `out`.json, each atomically (a
    temporary file in the same folder, then a rename); returns `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose from {sorted(FORMATS)}")
    module, card_model = build_exported(model_dir, tta)
    card = export_card(card_model, fmt, module.tta, module.confident_at)
    out = Path(out) if out else default_out(card_model.card, fmt)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, mode=0o644) as tmp:
        WRITERS[fmt](module, card, tmp)
        write_card(out, dict(card, file=out.name, sha256=sha256_file(tmp)))
    return out


def onnx_session(path, threads: int = None) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def exported_runner(path, fmt: str):
    """A function: uint8 (N, H, W, 3) array -> (probabilities (N, classes), novelty (N,)) as numpy
    arrays, running the exported file."""
    if fmt == "onnx":
        session = onnx_session(path)
        return lambda images: tuple(session.run(["probabilities", "novelty"], {INPUT_NAME: images}))
    module = load_torchscript(path)

    def run(images):
        with torch.inference_mode():
            probabilities, _, novelty = module(torch.from_numpy(images))
        return probabilities.numpy(), novelty.numpy()
    return run

