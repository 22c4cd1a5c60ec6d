"""What a training run trains on: the dataset (downloaded first where asked) with its validation
split, the reviewed user photos added to the training images (`extra_data`), the cached bank of
upload round trips that `serving_aug` swaps in, and for the open-set protocol only the known
classes."""

from pathlib import Path

import torch

from ml.data.augment import cached_client_bank
from ml.data.sources import load_dataset, with_extra_training_images
from ml.train.distributed import wait_for_all
from ml.data.download import download_cifar10


def training_data(config: dict, download=False, rank=0, world=1):
    """Returns (dataset, client bank or None, number of training images before the extra ones).
    `download` first fetches CIFAR-10 into config["data"] (on rank 0) when it holds no dataset."""
    if download:
        if rank == 0:
            download_cifar10(config["data"])
        wait_for_all(world)
    dataset = load_dataset(config["data"], val_size=config["val_size"], split_seed=config["split_seed"],
                           limit=config["limit"])
    base_train_images = len(dataset.train)
    if config.get("extra_data"):
        dataset = with_extra_training_images(dataset, config["extra_data"])
    client_bank = cached_client_bank(dataset.train.images, Path(config["data"]) / ".cache", config["seed"]) \
        if config["serving_aug"] else None
    if config["classes"]:  # the open-set protocol's known classes, with the full run's cached bank
        known = torch.isin(dataset.train.labels, torch.tensor([dataset.classes.index(c) for c in config["classes"]]))
        dataset = dataset.only_classes(config["classes"])
        client_bank = client_bank[:, known] if client_bank is not None else None
    return dataset, client_bank, base_train_images
