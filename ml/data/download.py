"""Fetch the official CIFAR-10 (python version, 170 MB) through torchvision, for a machine that has
neither data/ nor the shared archive:

    python -m ml.data.download data           # what `make data` runs; `python -m ml.train --download` too

torchvision is imported here only: loading it takes seconds and 200 MB, which serving (it imports
ml.data) should not pay.
"""

import argparse
import socket
import sys
from pathlib import Path

from torchvision.datasets import CIFAR10

from ml.data.sources import cifar_py_root, has_dataset

TIMEOUT_S = 30  # per network operation, so an offline machine fails instead of hanging


class DownloadError(Exception):
    """CIFAR-10 could not be fetched; the message says where from and why."""


def download_cifar10(root) -> Path:
    """Unpack CIFAR-10 into `root`/cifar-10-batches-py unless `root` already holds a dataset;
    returns `root`. Raises DownloadError when offline or the archive is damaged."""
    root = Path(root)
    if has_dataset(root):
        return root
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TIMEOUT_S)
    try:
        CIFAR10(str(root), train=True, download=True)
    except (OSError, RuntimeError) as error:  # URLError is an OSError; a bad checksum a RuntimeError
        raise DownloadError(f"could not download CIFAR-10 from {CIFAR10.url} into {root} "
                            f"(is this machine offline?): {error}") from error
    finally:
        socket.setdefaulttimeout(previous)
    if cifar_py_root(root) is None:
        raise DownloadError(f"torchvision's download left no {CIFAR10.base_folder} in {root}")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description="Download the official CIFAR-10 through torchvision "
                                     "unless the folder already holds a dataset.")
    parser.add_argument("root", nargs="?", default="data", help="dataset root (default data)")
    args = parser.parse_args(argv)
    try:
        download_cifar10(args.root)
    except DownloadError as error:
        sys.exit(str(error))
    print(f"CIFAR-10 in {args.root}")


if __name__ == "__main__":
    main()
