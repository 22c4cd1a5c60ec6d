"""ml.export: ONNX and TorchScript files give PyTorch's answers (parity, as `--check` measures it),
carry their card, and the ONNX client example (examples/onnx_client.py, shown in docs/export.md)
reproduces the site's answer from the photo file."""

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_model_dir
from examples import onnx_client
from ml.export.cli import PARITY_MIN, main
from ml.export.formats import FORMATS, card_path, export_model, load_torchscript, onnx_session
from ml.data.files import write_json_atomic
from ml.nets.modelfile import CARD_FILE, novelty_file, read_card
from ml.nets.novelty import normalise
from ml.predict.predictor import Predictor
from webapp.admin.exports import SUFFIXES

TEMPERATURE = 1.7
ENERGY_T = 3.0  # the novelty score's own temperature, as the card states it
# prediction sets loose enough that an untrained net's near-uniform probabilities give several candidates
CONFORMAL = {"method": "raps", "coverage": 0.95, "threshold": 0.33, "lambda": 0.01, "k_reg": 1,
             "held_out": {"images": 0, "coverage": None, "mean_set_size": None}}


def with_card(folder, **changes):
    """Change card fields of a fixture model folder (the weights, and their checksum, stay)."""
    write_json_atomic(folder / CARD_FILE, dict(read_card(folder), **changes))
    return folder


def plain_confidence(folder, images) -> np.ndarray:
    """Calibrated top probability of the plain view (no TTA), what the adaptive policy reads."""
    predictor = Predictor(folder, "cpu")
    predictor.tta = 0
    return predictor.probabilities(list(images))[0].amax(1).numpy()


@pytest.fixture(scope="module")
def served_like_the_site(tmp_path_factory):
    """A tiny model with what the shipped one has: TTA level 2 served by the adaptive policy, a
    temperature, an energy threshold, prediction sets. The policy's threshold is the median plain
    confidence of random_photos(16), so half of them get the extra views and half do not."""
    folder = make_model_dir(tmp_path_factory.mktemp("export") / "tta2")
    with_card(folder, tta=2, temperature=TEMPERATURE,
              novelty={"method": "energy", "energy_temperature": ENERGY_T, "threshold": -2.3026,
                       "keep_share": 0.95}, conformal=CONFORMAL)
    confident_at = float(np.median(plain_confidence(folder, random_photos(16))))
    return with_card(folder, serving={"tta": {"level": 2, "confident_at": confident_at}})


@pytest.fixture(scope="module")
def exports(served_like_the_site, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported")
    return {fmt: export_model(served_like_the_site, fmt, out / f"m{suffix}") for fmt, suffix in FORMATS.items()}


def random_photos(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


def run_exported(path, fmt, images):
    """(probabilities, logits, novelty) as numpy arrays."""
    if fmt == "onnx":
        return onnx_session(path, threads=1).run(None, {"image": images})
    module = load_torchscript(path)
    with torch.inference_mode():
        return [t.numpy() for t in module(torch.from_numpy(images))]


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_cli_export_and_check_parity_on_the_validation_split(fmt, served_like_the_site, tiny_dataset, tmp_path):
    out = tmp_path / f"model{FORMATS[fmt]}"
    main(["--model", str(served_like_the_site), "--format", fmt, "--out", str(out), "--check",
          "--data", str(tiny_dataset), "--val-size", "40"])
    parity = json.loads(card_path(out).read_text())["parity"]
    assert parity["images"] == 40
    assert parity["top1_agreement"] >= PARITY_MIN and parity["answer_agreement"] >= PARITY_MIN
    assert parity["max_probability_difference"] < 1e-4
    assert "extra views below" in parity["reference"]  # measured against the website's adaptive policy


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_output_matches_the_predictor_at_any_batch_size(fmt, exports, served_like_the_site):
    predictor = Predictor(served_like_the_site, "cpu")
    for count in (1, 7):
        images = random_photos(count, seed=count)
        probabilities, logits, novelty = run_exported(exports[fmt], fmt, images)
        reference, reference_novelty = predictor.probabilities(list(images))
        np.testing.assert_allclose(probabilities, reference.numpy(), atol=1e-5)
        np.testing.assert_allclose(novelty, reference_novelty.numpy(), atol=1e-4)
        np.testing.assert_allclose(logits.argmax(1), reference.numpy().argmax(1))
        # the card's energy temperature, applied in the graph as by the Predictor
        expected = -ENERGY_T * torch.logsumexp(torch.from_numpy(logits).double() / ENERGY_T, 1)
        np.testing.assert_allclose(novelty, expected.numpy(), atol=1e-4)


def test_the_graph_answers_with_the_websites_adaptive_policy(exports, served_like_the_site, tmp_path):
    """Confident photos get the plain view's logits, the others every view combined, as served; an
    export of every view for every photo (--tta 2) differs on the confident ones."""
    images = random_photos(16)
    confident_at = read_card(served_like_the_site)["serving"]["tta"]["confident_at"]
    confident = plain_confidence(served_like_the_site, images) >= confident_at
    assert confident.any() and not confident.all()
    adaptive = run_exported(exports["onnx"], "onnx", images)[1]
    plain = run_exported(export_model(served_like_the_site, "onnx", tmp_path / "plain.onnx", tta=0), "onnx", images)[1]
    every_view = run_exported(export_model(served_like_the_site, "onnx", tmp_path / "all.onnx", tta=2), "onnx",
                              images)[1]
    np.testing.assert_allclose(adaptive[confident], plain[confident], atol=1e-5)
    np.testing.assert_allclose(adaptive[~confident], every_view[~confident], atol=1e-5)
    assert np.abs(adaptive[confident] - every_view[confident]).max() > 1e-4
    card = json.loads(card_path(exports["onnx"]).read_text())
    assert card["tta"]["adaptive"]["confident_at"] == confident_at
    assert "adaptive" not in json.loads(card_path(tmp_path / "all.onnx").read_text())["tta"]


def test_the_card_is_next_to_the_file_and_embedded_in_it(exports):
    cards = {fmt: json.loads(card_path(path).read_text()) for fmt, path in exports.items()}
    for fmt, card in cards.items():
        assert card["sha256"] == hashlib.sha256(exports[fmt].read_bytes()).hexdigest()
        assert card["file"] == exports[fmt].name and card["format"] == fmt
    session = onnx_session(exports["onnx"], threads=1)
    embedded = json.loads(session.get_modelmeta().custom_metadata_map["card"])
    assert embedded == {k: v for k, v in cards["onnx"].items() if k not in ("file", "sha256")}
    extra = {"card.json": ""}
    load_torchscript(exports["torchscript"], extra)
    assert json.loads(extra["card.json"])["format"] == "torchscript"

    card = cards["onnx"]
    assert card["temperature"] == TEMPERATURE and card["classes"][0] == "airplane"
    assert card["tta"]["level"] == 2 and len(card["tta"]["views"]) == 6 and card["tta"]["in_graph"]
    assert card["novelty"]["method"] == "energy" and card["novelty"]["threshold"] == -2.3026
    assert card["novelty"]["score"] == "minus 3 * logsumexp(logits / 3)"
    assert card["input"] == {"name": "image", "dtype": "uint8", "shape": ["batch", 32, 32, 3],
                             "layout": card["input"]["layout"]}
    steps = card["preprocessing"]
    assert {"decode", "jpeg_draft", "exif_transpose", "colour", "resize", "crop"} <= set(steps)
    assert steps["resize"]["filter_when_shrinking"].startswith("Image.BOX") and steps["letterbox"] is False
    assert card["normalization"]["mean"][0] == pytest.approx(0.4914)
    sets = card["conformal"]  # the calibration round-trips: a client computes the sets from it
    assert {k: sets[k] for k in ("method", "coverage", "threshold", "lambda", "k_reg")} == \
        {k: CONFORMAL[k] for k in ("method", "coverage", "threshold", "lambda", "k_reg")}
    assert "lambda * max(0, r - k_reg) <= threshold" in sets["rule"]


def test_knn_novelty_is_computed_in_the_graph(tmp_path):
    folder = make_model_dir(tmp_path / "knn")
    bank = normalise(torch.randn(40, 16, generator=torch.Generator().manual_seed(0))).half()
    files, digest = novelty_file(bank)
    (folder / "novelty.safetensors").write_bytes(files["novelty.safetensors"])
    with_card(folder, novelty={"method": "knn", "threshold": 1.0, "bank_sha256": digest})
    images = random_photos(5)
    novelty = run_exported(export_model(folder, "onnx", tmp_path / "knn.onnx"), "onnx", images)[2]
    expected = Predictor(folder, "cpu").probabilities(list(images))[1]
    np.testing.assert_allclose(novelty, expected.numpy(), atol=1e-4)


def test_the_download_suffixes_are_the_export_formats():
    assert SUFFIXES == FORMATS


def encode(image, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def awkward_photos() -> dict:
    """Photos in the modes and sizes clients send, each made from a different picture."""
    rng = np.random.default_rng(1)

    def picture(height, width):
        ramp = np.linspace(0, 255, width)[None, :, None] * np.array([1.0, 0.4, 0.1])
        return Image.fromarray((ramp + rng.normal(0, 60, (height, width, 3))).clip(0, 255).astype(np.uint8))

    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    grey16 = (np.linspace(0, 65535, 90 * 70).reshape(70, 90) + rng.normal(0, 3000, (70, 90))).clip(0, 65535)
    return {
        "rotated.jpg": encode(picture(600, 1000), "JPEG", exif=exif.tobytes(), quality=90),
        "cmyk.jpg": encode(picture(200, 150).convert("CMYK"), "JPEG"),
        "rgba.png": encode(picture(80, 120).convert("RGBA"), "PNG"),
        "palette.png": encode(picture(64, 48).convert("P"), "PNG", transparency=0),
        "grey16.png": encode(Image.fromarray(grey16.astype(np.uint16)), "PNG"),
        "small.webp": encode(picture(20, 12), "WEBP", quality=90),
        "animated.gif": encode(picture(40, 40).convert("P"), "GIF", save_all=True,
                               append_images=[Image.new("P", (40, 40), 3)]),
    }


def test_onnx_client_gives_the_sites_answer(exports, served_like_the_site, tmp_path):
    """Label, confidence, novelty verdict and the prediction set (several candidates here)."""
    paths = []
    for name, data in awkward_photos().items():
        paths.append(tmp_path / name)
        paths[-1].write_bytes(data)
    answers = onnx_client.classify(str(exports["onnx"]), [str(p) for p in paths])
    predictor = Predictor(served_like_the_site, "cpu")
    site = predictor.predict([p.read_bytes() for p in paths])
    for path, answer, expected in zip(paths, answers, site):
        assert np.array_equal(onnx_client.decode(str(path)), predictor.decode(str(path))), path
        assert answer["label"] == expected["label"] and answer["recognised"] == expected["recognised"], path
        assert answer["candidates"] == expected["candidates"] and answer["answer"] == expected["answer"], path
        assert answer["confidence"] == pytest.approx(expected["confidence"], abs=1e-5)
    assert any(len(answer["candidates"]) > 1 for answer in answers)
