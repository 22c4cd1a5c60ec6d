"""CIFAR-10 (official python layout) or any labelled image folder, as uint8 tensors, with the
validation split held out of the training images.

Images are decoded once into a cache file (rebuilt when the source changes); augmentation
runs on whole batches on the training device (ml/data/batches.py) instead of per image in a
DataLoader.
"""

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml import CIFAR10_CLASSES
from ml.data.cache import cached_tensors
from ml.data.images import IMAGE_SUFFIXES, decode_image

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel mean/std of CIFAR-10 training images, 0..1
CIFAR_STD = (0.2470, 0.2435, 0.2616)
DEFAULT_VAL_SIZE = 5000
DEFAULT_SPLIT_SEED = 0
CIFAR_PY_DIR = "cifar-10-batches-py"


@dataclass
class Split:
    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64

    def __len__(self):
        return len(self.labels)

    def subset(self, indices):
        return Split(self.images[indices], self.labels[indices])


@dataclass
class Dataset:
    train: Split
    val: Split
    classes: list
    val_name: str  # "validation" (held out from training images) or "test" (a real test split)
    source: str
    unknown_val: Split = None  # after only_classes: the evaluation images of the classes left out

    def describe(self) -> dict:
        return {
            "source": self.source, "eval_split": self.val_name,
            "train_images": len(self.train), "eval_images": len(self.val),
            "train_per_class": class_counts(self.train.labels, self.classes),
            "eval_per_class": class_counts(self.val.labels, self.classes),
        }

    def only_classes(self, names) -> "Dataset":
        """The dataset restricted to the classes `names`, relabelled 0.. in that order (the
        open-set protocol trains on 8 classes; the split itself is unchanged)."""
        unknown = sorted(set(names) - set(self.classes))
        if unknown:
            raise ValueError(f"no classes {unknown} in this dataset; it has {self.classes}")
        old = torch.tensor([self.classes.index(name) for name in names])

        def restrict(split):
            keep = torch.isin(split.labels, old)
            relabel = torch.full((len(self.classes),), -1, dtype=torch.int64)
            relabel[old] = torch.arange(len(old))
            return Split(split.images[keep], relabel[split.labels[keep]])

        return Dataset(restrict(self.train), restrict(self.val), list(names), self.val_name, self.source,
                       self.val_outside(names))

    def val_outside(self, names) -> Split:
        """The evaluation images of every class not in `names` (the open-set protocol's unknowns)."""
        inside = torch.tensor([self.classes.index(name) for name in names])
        return self.val.subset(~torch.isin(self.val.labels, inside))


def class_counts(labels: torch.Tensor, classes) -> dict:
    counts = torch.bincount(labels, minlength=len(classes)).tolist()
    return dict(zip(classes, counts))


def stratified_split(labels: torch.Tensor, val_size: int, seed: int = DEFAULT_SPLIT_SEED):
    """Deterministic stratified hold-out: the same labels and seed always give the same indices.

    Each class contributes in proportion to its share; returns (train_indices, val_indices), sorted.
    """
    labels = torch.as_tensor(labels)
    n = len(labels)
    if not 0 < val_size < n:
        raise ValueError(f"validation size must be between 1 and {n - 1}, got {val_size}")
    generator = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels)
    per_class = [(labels == c).nonzero().flatten() for c in classes]
    # largest-remainder apportionment so the class quotas add up to val_size exactly
    exact = [len(idx) * val_size / n for idx in per_class]
    quota = [int(q) for q in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (quota[i] - exact[i], i))
    for i in by_remainder[:val_size - sum(quota)]:
        quota[i] += 1
    val = []
    for idx, q in zip(per_class, quota):
        val.append(idx[torch.randperm(len(idx), generator=generator)[:q]])
    val = torch.cat(val).sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[val] = False
    return mask.nonzero().flatten(), val


# ---- reading sources ----

class _CifarUnpickler(pickle.Unpickler):
    """CIFAR's batches are pickles: allow only the numpy array reconstruction they need."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")


def _read_cifar_batch(path: Path):
    with open(path, "rb") as f:
        batch = _CifarUnpickler(f, encoding="bytes").load()
    images = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return torch.from_numpy(images.copy()), torch.tensor(batch[b"labels"], dtype=torch.int64)


def cifar_py_root(root: Path):
    """The folder holding CIFAR-10's python batches at or just under `root`, or None."""
    for candidate in (root, root / CIFAR_PY_DIR):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


def _read_cifar_py(folder: Path):
    parts = [_read_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    train = Split(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]))
    test = Split(*_read_cifar_batch(folder / "test_batch")) if (folder / "test_batch").is_file() else None
    return train, test, list(CIFAR10_CLASSES)


def _list_image_folder(root: Path):
    """[(class, [files])] for <root>/<class>/*.jpg, classes sorted by name."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    listing = []
    for name in classes:
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            listing.append((name, files))
    return listing


def _fingerprint(listing) -> str:
    digest = hashlib.sha256()
    for name, files in listing:
        for path in files:
            stat = path.stat()
            digest.update(f"{name}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode_folder(listing, classes) -> Split:
    index = {name: i for i, name in enumerate(classes)}
    images, labels = [], []
    for name, files in listing:
        for path in files:
            images.append(decode_image(path))
            labels.append(index[name])
    array = np.stack(images).transpose(0, 3, 1, 2).copy()
    return Split(torch.from_numpy(array), torch.tensor(labels, dtype=torch.int64))


def _read_image_folder(root: Path, classes, cache_dir: Path) -> Split:
    listing = _list_image_folder(root)
    if not listing:
        raise FileNotFoundError(f"no images in class folders under {root}")
    cache = cache_dir / f"{root.name}-{_fingerprint(listing)}.safetensors"

    def decode():
        split = _decode_folder(listing, classes)
        return {"images": split.images, "labels": split.labels}

    tensors = cached_tensors(cache, decode)
    return Split(tensors["images"], tensors["labels"])


def _folder_classes(*roots):
    names = set()
    for root in roots:
        if root is not None:
            names.update(name for name, _ in _list_image_folder(root))
    return sorted(names)


def _folder_roots(root: Path):
    """(training root, test root or None) of an image folder tree."""
    return (root / "train" if (root / "train").is_dir() else root,
            root / "test" if (root / "test").is_dir() else None)


def has_dataset(root) -> bool:
    """Whether `root` holds images that load_dataset reads: CIFAR-10's batches or class folders."""
    root = Path(root)
    return cifar_py_root(root) is not None or (root.is_dir() and bool(_list_image_folder(_folder_roots(root)[0])))


def load_dataset(root, val_size: int = DEFAULT_VAL_SIZE, split_seed: int = DEFAULT_SPLIT_SEED,
                 limit: int = None, cache_dir=None) -> Dataset:
    """Load training and evaluation images from `root`.

    `root` holds cifar-10-batches-py/ (or its files), or an image folder tree with class
    folders, optionally under train/ and test/. With a test split, evaluation uses it;
    otherwise a stratified validation split of `val_size` images is held out from training.
    `limit` keeps at most that many training images (stratified too) for smoke runs.
    ml.data.download fetches CIFAR-10 into `root` on a machine that has no copy.
    """
    root = Path(root)
    cache_dir = Path(cache_dir) if cache_dir else root / ".cache"
    cifar = cifar_py_root(root)
    if cifar is not None:
        train, test, classes = _read_cifar_py(cifar)
        source = f"cifar-10-python:{cifar}"
    else:
        if not root.is_dir():
            raise FileNotFoundError(f"no dataset at {root}")
        train_root, test_root = _folder_roots(root)
        classes = _folder_classes(train_root, test_root)
        train = _read_image_folder(train_root, classes, cache_dir)
        test = _read_image_folder(test_root, classes, cache_dir) if test_root else None
        source = f"image-folder:{root}"
    if test is not None:
        dataset = Dataset(train, test, classes, "test", source)
    else:
        train_idx, val_idx = stratified_split(train.labels, val_size, split_seed)
        dataset = Dataset(train.subset(train_idx), train.subset(val_idx), classes, "validation", source)
    if limit and limit < len(dataset.train):
        _, keep = stratified_split(dataset.train.labels, limit, split_seed + 1)
        dataset.train = dataset.train.subset(keep)
    return dataset


def with_extra_training_images(dataset: Dataset, root) -> Dataset:
    """`dataset` with the class folders under `root` (e.g. reviewed user photos) appended to its
    training split; their class names must be the dataset's. Evaluation is unchanged, so the
    validation accuracy of a run with extra images compares with one without."""
    listing = _list_image_folder(Path(root))
    unknown = sorted({name for name, _ in listing} - set(dataset.classes))
    if unknown:
        raise ValueError(f"{root}: classes {unknown} are not in this dataset ({dataset.classes})")
    if not listing:
        return dataset
    extra = _decode_folder(listing, dataset.classes)
    train = Split(torch.cat([dataset.train.images, extra.images]), torch.cat([dataset.train.labels, extra.labels]))
    return Dataset(train, dataset.val, dataset.classes, dataset.val_name, dataset.source, dataset.unknown_val)
