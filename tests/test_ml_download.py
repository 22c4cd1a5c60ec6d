"""ml.data.download and `python -m ml.train --download`: the wiring, on a tiny fake archive (no network)."""

import json
import pickle
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest

import ml.data.download
from ml.train import cli as ml_train

TRAIN_FLAGS = ["--no-suite", "--val-size", "40", "--threads", "1", "--preset", "fast", "--widths", "8", "16", "16",
               "--epochs", "1", "--batch-size", "50", "--precision", "fp32"]


class FakeCIFAR10:
    """Stands in for torchvision's CIFAR10(root, download=True): unpacks a tiny cifar-10-batches-py."""
    url, base_folder, calls = "https://example.invalid/cifar-10-python.tar.gz", "cifar-10-batches-py", []

    def __init__(self, root, train=True, download=False):
        FakeCIFAR10.calls.append((root, train, download))
        folder = Path(root) / self.base_folder
        folder.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                     b"labels": [i % 10 for i in range(20)]}
            (folder / name).write_bytes(pickle.dumps(batch))


class OfflineCIFAR10(FakeCIFAR10):
    def __init__(self, root, train=True, download=False):
        raise URLError("[Errno -3] Temporary failure in name resolution")


@pytest.fixture
def fake_torchvision(monkeypatch):
    FakeCIFAR10.calls = []
    monkeypatch.setattr(ml.data.download, "CIFAR10", FakeCIFAR10)
    return FakeCIFAR10


def test_train_download_flag_fetches_cifar_into_an_empty_folder(tmp_path, fake_torchvision):
    data = tmp_path / "data"
    ml_train.main(["--data", str(data), "--download", "--out", str(tmp_path / "model"), *TRAIN_FLAGS])
    assert fake_torchvision.calls == [(str(data), True, True)]
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["data"]["source"].startswith("cifar-10-python:") and card["data"]["train_images"] == 100
    assert card["evaluation"]["split"] == "test" and card["evaluation"]["images"] == 20


def test_without_the_flag_an_empty_folder_is_an_error(tmp_path, fake_torchvision):
    with pytest.raises(FileNotFoundError):
        ml_train.main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "model"), *TRAIN_FLAGS])
    assert fake_torchvision.calls == []


def test_download_leaves_an_existing_dataset_alone(tiny_dataset, fake_torchvision):
    assert ml.data.download.download_cifar10(tiny_dataset) == tiny_dataset
    assert fake_torchvision.calls == []


def test_download_command_says_when_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ml.data.download, "CIFAR10", OfflineCIFAR10)
    with pytest.raises(SystemExit) as stopped:
        ml.data.download.main([str(tmp_path / "data")])
    assert "offline" in str(stopped.value) and OfflineCIFAR10.url in str(stopped.value)
    with pytest.raises(SystemExit) as stopped:
        ml_train.main(["--data", str(tmp_path / "data"), "--download", "--out", str(tmp_path / "m"), *TRAIN_FLAGS])
    assert "offline" in str(stopped.value)
