"""ml.data.images and ml.predict: every listed format and mode, EXIF, limits, the CLI."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import PROJECT_ROOT
from ml.data.images import (CorruptImageError, ImageTooLargeError, UnsupportedImageError, decode_image,
                       resize_center_crop)
from ml.predict.predictor import Predictor


def encode(image, fmt, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def halves(size=(64, 32)):
    """Left half red, right half blue: orientation is visible in the result."""
    array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    array[:, : size[0] // 2] = (255, 0, 0)
    array[:, size[0] // 2:] = (0, 0, 255)
    return Image.fromarray(array)


CASES = {
    "jpeg": lambda: encode(halves(), "JPEG"),
    "png": lambda: encode(halves(), "PNG"),
    "webp": lambda: encode(halves(), "WEBP"),
    "bmp": lambda: encode(halves(), "BMP"),
    "gif-animated": lambda: encode(halves().convert("P"), "GIF", save_all=True,
                                   append_images=[Image.new("P", (64, 32), 3)]),
    "greyscale": lambda: encode(halves().convert("L"), "PNG"),
    "cmyk-jpeg": lambda: encode(halves().convert("CMYK"), "JPEG"),
    "palette-transparent": lambda: encode(halves().convert("P"), "PNG", transparency=0),
    "rgba": lambda: encode(halves().convert("RGBA"), "PNG"),
    "la": lambda: encode(halves().convert("LA"), "PNG"),
    "16-bit": lambda: encode(Image.fromarray(np.full((32, 64), 40000, dtype=np.uint16)), "PNG"),
    "1-bit": lambda: encode(halves().convert("1"), "PNG"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_listed_format_and_mode_decodes_to_rgb(case):
    array = decode_image(CASES[case]())
    assert array.shape == (32, 32, 3) and array.dtype == np.uint8


def test_16_bit_is_scaled_not_clipped():
    array = decode_image(CASES["16-bit"]())
    assert abs(int(array[0, 0, 0]) - 40000 // 256) <= 1


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert decode_image(encode(image, "PNG"))[5, 5].tolist() == [255, 255, 255]


def test_exif_rotation_is_honoured():
    image = halves((64, 32))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rotated_by_viewer = decode_image(encode(image, "JPEG", exif=exif.tobytes(), quality=95))
    expected = decode_image(encode(image.transpose(Image.ROTATE_270), "JPEG", quality=95))
    assert np.abs(rotated_by_viewer.astype(int) - expected.astype(int)).mean() < 8
    # without the tag, red stays on the left; rotated, red is on top
    assert rotated_by_viewer[2, 16, 0] > 200 and rotated_by_viewer[29, 16, 2] > 200


def test_resize_matches_torchvision_transforms_with_area_averaging():
    from torchvision import transforms
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 160, 3), dtype=np.uint8))
    box = transforms.InterpolationMode.BOX
    reference = transforms.Compose([transforms.Resize(32, interpolation=box), transforms.CenterCrop(32)])(image)
    assert np.array_equal(np.asarray(resize_center_crop(image)), np.asarray(reference))


def test_an_integer_nearest_upscale_decodes_back_to_the_original_pixels():
    original = np.random.default_rng(2).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    upscaled = Image.fromarray(original).resize((256, 256), Image.NEAREST)
    assert np.array_equal(decode_image(encode(upscaled, "PNG")), original)


def test_large_jpeg_uses_draft_and_matches_full_decode():
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    image = image.resize((4032, 3024), Image.BILINEAR)
    data = encode(image, "JPEG", quality=90)
    fast = decode_image(data).astype(int)
    full = np.asarray(resize_center_crop(Image.open(io.BytesIO(data)).convert("RGB"))).astype(int)
    assert np.abs(fast - full).mean() < 6


@pytest.mark.parametrize("data, error", [
    (b"", CorruptImageError),
    (b"hello, I am text pretending to be a jpeg", UnsupportedImageError),
    (b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>", UnsupportedImageError),
    (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", UnsupportedImageError),
    (b"%PDF-1.4\n%\xe2\xe3", UnsupportedImageError),
])
def test_non_images_are_refused(data, error):
    with pytest.raises(error):
        decode_image(data)


def test_truncated_jpeg_is_refused():
    data = encode(halves((256, 256)), "JPEG")
    with pytest.raises(CorruptImageError):
        decode_image(data[: len(data) // 2])


def test_too_many_pixels_refused_before_decoding():
    import struct
    import zlib
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # a 20000 x 20000 PNG of a few bytes: refused from the header alone
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) \
        + chunk(b"IEND", b"")
    assert len(png) < 200
    with pytest.raises(ImageTooLargeError):
        decode_image(png)


def test_predictor_gives_top5_in_order(tiny_model_dir):
    predictor = Predictor(tiny_model_dir)
    results = predictor.predict([CASES["jpeg"](), CASES["png"]()])
    assert len(results) == 2
    for result in results:
        probabilities = [t["probability"] for t in result["top"]]
        assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
        assert result["label"] == result["top"][0]["label"] and result["confidence"] == probabilities[0]
        assert set(t["label"] for t in result["top"]) <= set(predictor.classes)


def test_predict_cli_prints_one_line_per_image_and_fails_after_the_others(tmp_path, tiny_model_dir):
    good = tmp_path / "good.png"
    good.write_bytes(CASES["png"]())
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    out = subprocess.run([sys.executable, "-m", "ml.predict", "--model", str(tiny_model_dir),
                          str(good), str(bad), str(good)], capture_output=True, text=True, cwd=PROJECT_ROOT)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode != 0
    assert [line["file"] for line in lines] == [str(good), str(bad), str(good)]
    assert "error" in lines[1] and "label" in lines[0] and lines[0]["top"] == lines[2]["top"]
    expected = Predictor(tiny_model_dir).predict([good])[0]
    assert lines[0]["label"] == expected["label"]
    assert lines[0]["confidence"] == pytest.approx(expected["confidence"], rel=1e-5)
    # a card without conformal sets: the label is the one candidate
    assert lines[0]["candidates"] == [expected["label"]] and lines[0]["answer"] == "sure"


def test_the_cards_conformal_sets_give_the_candidates_most_probable_first(tmp_path):
    from conftest import make_model_dir
    from ml.data.files import write_json_atomic
    from ml.nets.modelfile import CARD_FILE, read_card

    folder = make_model_dir(tmp_path / "sets")
    # an untrained net is near-uniform: ten classes' cumulative mass passes 0.35 after three or four
    sets = {"method": "raps", "coverage": 0.95, "threshold": 0.35, "lambda": 0.0, "k_reg": 0}
    write_json_atomic(folder / CARD_FILE, dict(read_card(folder), conformal=sets))
    photo = tmp_path / "photo.png"
    photo.write_bytes(CASES["png"]())
    out = subprocess.run([sys.executable, "-m", "ml.predict", "--model", str(folder), str(photo)],
                         capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    line = json.loads(out.stdout)
    assert len(line["candidates"]) > 1 and line["answer"] == "unsure"
    assert line["candidates"] == [t["label"] for t in line["top"]][:len(line["candidates"])]
    kept = sum(t["probability"] for t in line["top"][:len(line["candidates"])])
    assert kept <= 0.35 < kept + line["top"][len(line["candidates"])]["probability"]


# ---- "none of these": recognised and novelty ----

def test_answers_carry_novelty_and_recognised_and_an_override_flips_it(tiny_model_dir):
    photo = [CASES["png"]()]
    answer = Predictor(tiny_model_dir).predict(photo)[0]
    # a card without a novelty section: the minus-top-probability score, and no threshold
    assert answer["recognised"] is True and answer["novelty"] == pytest.approx(-answer["confidence"], rel=1e-6)
    below = Predictor(tiny_model_dir, novelty_threshold=answer["novelty"] - 1e-4).predict(photo)[0]
    above = Predictor(tiny_model_dir, novelty_threshold=answer["novelty"] + 1e-4).predict(photo)[0]
    assert below["recognised"] is False and above["recognised"] is True
    assert below["novelty"] == above["novelty"] == answer["novelty"]
    assert below["top"] == answer["top"]  # the closest guesses stay the same
    json.dumps(below)


def test_a_knn_card_recognises_what_its_bank_holds_and_the_override_wins(tmp_path):
    import torch

    from conftest import make_model_dir
    from ml.data.batches import normalize
    from ml.nets.modelfile import CARD_FILE, novelty_file
    from ml.nets.models import tta_outputs
    from ml.nets.novelty import KNN_K, normalise

    folder = make_model_dir(tmp_path / "knn")
    model_only = Predictor(folder)
    near, far = CASES["png"](), encode(Image.fromarray(
        np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    x = normalize(torch.from_numpy(model_only.decode(near).copy()).permute(2, 0, 1).unsqueeze(0))
    with torch.no_grad():
        features = tta_outputs(model_only.model, x, 0)[1]
    # the bank: KNN_K copies of the first photo's features among random directions
    bank = torch.cat([normalise(features).repeat(KNN_K, 1), normalise(torch.randn(30, features.shape[1]))]).half()
    files, digest = novelty_file(bank)
    (folder / "novelty.safetensors").write_bytes(files["novelty.safetensors"])
    card = json.loads((folder / CARD_FILE).read_text())
    card["novelty"] = {"method": "knn", "threshold": 0.05, "bank_sha256": digest}
    (folder / CARD_FILE).write_text(json.dumps(card))

    near_answer, far_answer = Predictor(folder).predict([near, far])
    assert near_answer["novelty"] < 0.05 < far_answer["novelty"]
    assert near_answer["recognised"] is True and far_answer["recognised"] is False
    strict = Predictor(folder, novelty_threshold=0.0).predict([near])[0]
    lenient = Predictor(folder, novelty_threshold=10.0).predict([far])[0]
    assert strict["recognised"] is (near_answer["novelty"] <= 0.0) and lenient["recognised"] is True
