"""Train a CIFAR-10 classifier and write a model folder.

    python -m ml.train --preset fast --data data --out runs/fast
    torchrun --nproc-per-node 2 -m ml.train --preset fast ...      (DistributedDataParallel)

The recipes are in ml/train/presets.py; every hyperparameter can be overridden by a flag. SIGTERM
stops after the current step, writes a resume checkpoint and exits with status 3; `--resume`
continues. `--download` fetches the official CIFAR-10 first when the data folder holds no dataset.
The loop itself: ml/train/loop.py.
"""

import argparse
import json
import os
import signal
import sys
from datetime import datetime
from pathlib import Path

import torch

from ml.data.download import DownloadError
from ml.train.distributed import StopFlag
from ml.train.finetune import FINETUNE_EPOCHS, FINETUNE_LR_SCALE, fine_tuning
from ml.train.libc import die_with_parent
from ml.train.loop import RunSettings, train
from ml.train.presets import PRESETS, add_hyperparameter_flags, preset_with_flags
from ml.train.progress import terminal_line

EXIT_STOPPED = 3  # stopped by SIGTERM/SIGINT after writing a resume checkpoint
DIE_WITH_PARENT = "ML_TRAIN_DIE_WITH_PARENT"  # set (by a job runner): SIGKILL when the parent process exits


def resolve_config(args) -> dict:
    """The run's full settings: the preset with the flags given, then seed, data and split."""
    config = preset_with_flags(args)
    config.update(seed=args.seed, limit=args.limit, val_size=args.val_size, split_seed=args.split_seed,
                  data=str(args.data), classes=args.classes,
                  extra_data=str(args.extra_data) if args.extra_data else None, init_from=None)
    if args.init_from:
        fine_tuning(config, args)
    return config


def build_parser():
    p = argparse.ArgumentParser(prog="python -m ml.train", description="Train a CIFAR-10 classifier; writes a "
                                "model folder (model.safetensors + card.json).")
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS),
                   help="recipe: seed (the tutorial), fast (default), best (the shipped model), "
                        "sgd (airbench94's all-SGD recipe)")
    p.add_argument("--data", default="data", help="dataset root: cifar-10-batches-py or class folders")
    p.add_argument("--download", action="store_true",
                   help="download the official CIFAR-10 into --data first if it holds no dataset")
    p.add_argument("--out", default=None, help="model folder to write (default runs/<preset>-<time>)")
    p.add_argument("--checkpoint", default=None,
                   help="resume checkpoint written on SIGTERM (default <out>.resume.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--checkpoint-every-epoch", action="store_true",
                   help="also write --checkpoint after every epoch (a run killed without warning resumes "
                        "from its last epoch)")
    p.add_argument("--events", default=None, help="also append every progress record to this JSON-lines file")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--seed", type=int, default=0, help="random seed for init, shuffling and augmentation")
    p.add_argument("--limit", type=int, default=None, help="train on at most N images (smoke runs)")
    p.add_argument("--suite", action=argparse.BooleanOptionalAction, default=True,
                   help="end by measuring the robustness suite and far-out sets into the card (minutes)")
    p.add_argument("--classes", nargs="+", default=None,
                   help="train on these classes only (the open-set protocol; default: all)")
    p.add_argument("--val-size", type=int, default=5000, help="images held out for validation")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    p.add_argument("--extra-data", default=None,
                   help="image folder (<class>/*.png) added to the training images, e.g. reviewed user "
                        "photos; evaluation is unchanged (default: none)")
    p.add_argument("--init-from", default=None,
                   help="model folder to start from: its architecture and weights, and unless --epochs/--lr "
                        f"are given {FINETUNE_EPOCHS} epochs at {FINETUNE_LR_SCALE}x the preset's learning "
                        "rates (default: a fresh model)")
    add_hyperparameter_flags(p)
    return p


def main(argv=None):
    if os.environ.get(DIE_WITH_PARENT):  # under torchrun: each rank dies with torchrun, as torchrun with its runner
        die_with_parent(signal.SIGKILL)
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = resolve_config(args)
    out = Path(args.out or f"runs/{args.preset}-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
    checkpoint = Path(args.checkpoint) if args.checkpoint else out.with_name(out.name + ".resume.pt")
    events = open(args.events, "a") if args.events else None

    def emit(record):
        print(terminal_line(record), flush=True)
        if events:
            events.write(json.dumps(record) + "\n")
            events.flush()

    stop = StopFlag()
    stop.install()
    try:
        card = train(config, out, RunSettings(checkpoint, args.resume, args.device, args.download, args.suite,
                                                 args.checkpoint_every_epoch),
                     emit, stop)
    except DownloadError as error:
        sys.exit(str(error))
    if card is None:
        sys.exit(EXIT_STOPPED)
    if card:
        print(f"wrote {out}: {card['evaluation']['split']} accuracy {card['evaluation']['accuracy']:.4f} "
              f"in {card['training']['train_seconds']:.0f}s of training")


if __name__ == "__main__":
    main()
