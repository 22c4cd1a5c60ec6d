"""The on-device batch pipeline: batches of a split, normalisation, and the flips and
translations that run on whole batches on the training device."""

import torch

from ml.data.sources import CIFAR_MEAN, CIFAR_STD, Split


def normalize(images: torch.Tensor, mean=CIFAR_MEAN, std=CIFAR_STD) -> torch.Tensor:
    """uint8 (N,3,H,W) -> float normalized, channels_last for faster convolutions on CPU and GPU."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1) * 255
    x = (images.float() - mean) / std
    return x.contiguous(memory_format=torch.channels_last)


def alternating_flip(split: Split, seed: int, epoch: int) -> Split:
    """airbench's derandomized flip: a fixed random half of the images is mirrored on even epochs
    and the other half on odd epochs, so every two epochs show each image both ways (random
    flips leave a quarter of the images unflipped or flipped twice, which trains slightly worse)."""
    half = torch.rand(len(split), generator=torch.Generator().manual_seed(seed)) < 0.5
    mirrored = half ^ bool(epoch % 2)
    return Split(torch.where(mirrored.view(-1, 1, 1, 1), split.images.flip(3), split.images), split.labels)


def augment(images: torch.Tensor, generator: torch.Generator, translate: int = 2) -> torch.Tensor:
    """Random translation by up to `translate` pixels (reflect padding, then a random crop),
    applied to a whole float batch at once; returns a channels_last batch."""
    n, _, h, w = images.shape
    if translate:
        padded = torch.nn.functional.pad(images, (translate,) * 4, mode="reflect")
        shifts = torch.randint(0, 2 * translate + 1, (2, n), generator=generator,
                               device=generator.device)
        # Gather each image's crop with one advanced-index op instead of a Python loop.
        rows = (shifts[0].view(n, 1) + torch.arange(h, device=images.device)).view(n, 1, h, 1)
        cols = (shifts[1].view(n, 1) + torch.arange(w, device=images.device)).view(n, 1, 1, w)
        batch = torch.arange(n, device=images.device).view(n, 1, 1, 1)
        chans = torch.arange(images.shape[1], device=images.device).view(1, -1, 1, 1)
        images = padded[batch, chans, rows, cols]
    return images.contiguous(memory_format=torch.channels_last)


def iterate_batches(split: Split, batch_size: int, generator: torch.Generator = None,
                    shard: tuple = (0, 1)):
    """Yield (uint8 images, labels) batches; shuffled when a generator is given.

    `shard=(rank, world)` gives each distributed process its own slice of every global batch.
    """
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    rank, world = shard
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size][rank::world]
        yield split.images[idx], split.labels[idx]
