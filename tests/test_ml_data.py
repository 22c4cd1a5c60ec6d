"""ml.data: splits, sources, caching and batch augmentation."""

import pickle

import numpy as np
import pytest
import torch

from ml import CIFAR10_CLASSES
from ml.data.batches import alternating_flip, augment, iterate_batches
from ml.data.sources import load_dataset, stratified_split


def test_split_is_stratified_and_deterministic():
    labels = torch.arange(10).repeat_interleave(100)  # 1000 images, 100 per class
    train_a, val_a = stratified_split(labels, 200, seed=0)
    train_b, val_b = stratified_split(labels, 200, seed=0)
    assert torch.equal(val_a, val_b) and torch.equal(train_a, train_b)
    assert torch.bincount(labels[val_a]).tolist() == [20] * 10
    assert len(set(train_a.tolist()) & set(val_a.tolist())) == 0
    assert len(train_a) + len(val_a) == 1000
    _, val_other = stratified_split(labels, 200, seed=1)
    assert not torch.equal(val_a, val_other)


def test_split_with_uneven_classes_sums_exactly():
    labels = torch.tensor([0] * 7 + [1] * 13 + [2] * 30)
    _, val = stratified_split(labels, 11, seed=3)
    assert len(val) == 11
    counts = torch.bincount(labels[val], minlength=3).tolist()
    assert counts[2] >= counts[1] >= counts[0] >= 1


def test_split_rejects_impossible_sizes():
    with pytest.raises(ValueError):
        stratified_split(torch.zeros(10, dtype=torch.long), 10)


def test_image_folder_loads_with_validation_split_and_cache(tiny_dataset):
    dataset = load_dataset(tiny_dataset, val_size=50)
    assert dataset.classes == CIFAR10_CLASSES
    assert dataset.val_name == "validation"
    assert len(dataset.train) == 190 and len(dataset.val) == 50
    assert dataset.train.images.dtype == torch.uint8 and dataset.train.images.shape[1:] == (3, 32, 32)
    assert list((tiny_dataset / ".cache").glob("*.safetensors"))
    again = load_dataset(tiny_dataset, val_size=50)  # from the cache: identical tensors
    assert torch.equal(again.train.images, dataset.train.images)


def test_cache_rebuilds_when_source_changes(tmp_path):
    from conftest import write_tiny_dataset
    root = write_tiny_dataset(tmp_path / "d", per_class=6)
    first = load_dataset(root, val_size=10)
    extra = root / "train" / "cat" / "9999.png"
    from PIL import Image
    Image.new("RGB", (32, 32), (1, 2, 3)).save(extra)
    second = load_dataset(root, val_size=10)
    assert len(second.train) + len(second.val) == len(first.train) + len(first.val) + 1


def test_limit_keeps_a_stratified_subset(tiny_dataset):
    dataset = load_dataset(tiny_dataset, val_size=50, limit=60)
    assert len(dataset.train) == 60
    assert torch.bincount(dataset.train.labels).tolist() == [6] * 10


def test_train_and_test_subtrees_use_the_test_split(tmp_path):
    from conftest import write_tiny_dataset
    write_tiny_dataset(tmp_path / "a", per_class=5)
    write_tiny_dataset(tmp_path / "b", per_class=3, seed=1)
    (tmp_path / "b" / "train").rename(tmp_path / "a" / "test")
    dataset = load_dataset(tmp_path / "a")
    assert dataset.val_name == "test" and len(dataset.val) == 30 and len(dataset.train) == 50


def write_cifar_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             b"labels": [i % 10 for i in range(n)]}
    with open(path, "wb") as f:
        pickle.dump(batch, f)


def test_reads_the_official_cifar_python_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        write_cifar_batch(folder / f"data_batch_{i}", 20, i)
    write_cifar_batch(folder / "test_batch", 30, 9)
    dataset = load_dataset(tmp_path)
    assert dataset.val_name == "test"
    assert len(dataset.train) == 100 and len(dataset.val) == 30
    assert dataset.classes == CIFAR10_CLASSES


def test_cifar_reader_refuses_pickled_code(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_dataset(tmp_path)


def test_augment_translates_whole_batches():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(augment(images, gen, translate=0), images)
    out = augment(images, gen, translate=2)
    assert out.shape == images.shape and not torch.equal(out, images)
    # every output pixel comes from the same image and channel of the padded input
    for i in range(2):
        for c in range(3):
            assert set(out[i, c].flatten().tolist()) <= set(images[i, c].flatten().tolist())


def test_alternating_flip_mirrors_each_image_on_every_other_epoch():
    from ml.data.sources import Split
    images = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    split = Split(images, torch.arange(64))
    epochs = [alternating_flip(split, seed=0, epoch=e).images for e in range(3)]
    mirrored = [(e == images.flip(3)).flatten(1).all(1) & ~(e == images).flatten(1).all(1) for e in epochs]
    assert 16 < int(mirrored[0].sum()) < 48           # about half on epoch 0
    assert torch.equal(mirrored[1], ~mirrored[0])      # exactly the other half on epoch 1
    assert torch.equal(epochs[2], epochs[0])           # and the pattern repeats
    assert torch.equal(alternating_flip(split, seed=1, epoch=0).labels, split.labels)


def test_batches_cover_every_image_once_and_shard():
    from ml.data.sources import Split
    split = Split(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10))
    seen = torch.cat([y for _, y in iterate_batches(split, 4, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    rank0 = torch.cat([y for _, y in iterate_batches(split, 4, torch.Generator().manual_seed(0), (0, 2))])
    rank1 = torch.cat([y for _, y in iterate_batches(split, 4, torch.Generator().manual_seed(0), (1, 2))])
    assert sorted(rank0.tolist() + rank1.tolist()) == list(range(10))
    assert not set(rank0.tolist()) & set(rank1.tolist())


@pytest.mark.slow
def test_real_cifar_images_load(real_data_dir):
    dataset = load_dataset(real_data_dir)
    assert len(dataset.train) == 45000 and len(dataset.val) == 5000
    assert torch.bincount(dataset.val.labels).tolist() == [500] * 10
