"""ml.nets.models and ml.nets.modelfile: architectures, model folders, refusing damaged weights."""

import json

import pytest
import torch

from conftest import make_model_dir
from ml.nets.modelfile import ModelFileError, load_model_dir, read_card, write_model_dir
from ml.nets.models import AirNet, build_model, count_parameters


def test_seednet_is_the_tutorial_network():
    model = build_model("seednet")
    assert model(torch.zeros(5, 3, 32, 32)).shape == (5, 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == \
        [(3, 32, (3, 3), (0, 0)), (32, 64, (3, 3), (0, 0)), (64, 128, (3, 3), (0, 0))]
    assert [(l.in_features, l.out_features) for l in linears] == [(512, 128), (128, 64), (64, 32), (32, 10)]
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.2 for m in model.modules()) == 3
    assert count_parameters(model) == 169_578


def test_airnet_shapes_and_whitening():
    torch.manual_seed(0)
    model = build_model("airnet", widths=[8, 16, 16])
    images = torch.randn(64, 3, 32, 32) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1)
    model.init_whitening(images)
    assert model(images[:4]).shape == (4, 10)
    # the first 12 filters whiten 2x2 patches: their responses are decorrelated with unit variance
    patches = torch.nn.functional.conv2d(images, model.whiten.weight[:12])
    flat = patches.permute(1, 0, 2, 3).reshape(12, -1)
    covariance = flat @ flat.T / flat.shape[1]
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model("resnet1000")


def test_model_folder_round_trip(tmp_path):
    path = make_model_dir(tmp_path / "m", arch="airnet")
    model, card = load_model_dir(path)
    assert isinstance(model, AirNet) and not model.training
    assert card["version"] == "test-1" and len(card["weights_sha256"]) == 64
    again = make_model_dir(tmp_path / "m", arch="seednet", version="test-2")  # atomic replace
    model2, card2 = load_model_dir(again)
    assert card2["version"] == "test-2" and type(model2).__name__ == "SeedNet"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    x = torch.rand(2, 3, 32, 32)
    original = build_model("seednet")
    torch.manual_seed(0)
    original = build_model("seednet").eval()
    write_model_dir(tmp_path / "same", original, read_card(again))
    loaded, _ = load_model_dir(tmp_path / "same")
    assert torch.equal(loaded(x), original(x))


def test_truncated_weights_are_refused_naming_the_file(tmp_path):
    path = make_model_dir(tmp_path / "m")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_model_dir(path)


def test_tampered_weights_are_refused(tmp_path):
    path = make_model_dir(tmp_path / "m")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # still parses as safetensors, but is not what was written
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        load_model_dir(path)


def test_tampered_card_and_pickles_are_refused(tmp_path):
    path = make_model_dir(tmp_path / "m")
    card = json.loads((path / "card.json").read_text())
    card["weights_sha256"] = "0" * 64
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError):
        load_model_dir(path)
    (path / "card.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="card.json"):
        load_model_dir(path)
    pickle_dir = make_model_dir(tmp_path / "p")
    torch.save({"x": torch.zeros(1)}, pickle_dir / "model.safetensors")  # a pickle in disguise
    with pytest.raises(ModelFileError, match="model.safetensors"):
        load_model_dir(pickle_dir)


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = make_model_dir(tmp_path / "m", arch="seednet")
    card = json.loads((path / "card.json").read_text())
    card["arch"] = {"name": "airnet", "kwargs": {"widths": [8, 16, 16]}}
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="do not fit"):
        load_model_dir(path)
