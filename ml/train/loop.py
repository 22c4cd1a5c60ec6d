"""Train a CIFAR-10 classifier and write a model folder.

    python -m ml.train --preset fast --data data --out runs/fast
    torchrun --nproc-per-node 2 -m ml.train --preset fast ...      (DistributedDataParallel)

The recipes are in ml/presets.py; every hyperparameter can be overridden by a flag. SIGTERM stops
after the current step, writes a resume checkpoint and exits with status 3; `--resume` continues.
`--download` fetches the official CIFAR-10 first when the data folder holds no dataset.

The pieces live beside it, as in torchvision's classification reference: optimisers, schedule and
lookahead in ml/optim.py, stop flag and multi-process helpers in ml/distributed.py, checkpoints
and TrainState in ml/checkpoint.py, the model card in ml/card.py, the starting model (fresh or
`--init-from` a trained one) in ml/finetune.py, what a run trains on in ml/training_data.py.
"""

import argparse
import json
import math
import os
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ml.data.augment import client_mix, training_inputs
from ml.calibrate.finish import calibrated_report, fit_novelty_and_measure
from ml.train.card import make_card, weights_digest
from ml.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from ml.data.sources import CIFAR_MEAN, CIFAR_STD, alternating_flip, iterate_batches
from ml.nets.device import autocast, pick_amp_dtype, pick_device
from ml.train.distributed import (StopFlag, distributed_info, finish_distributed, init_distributed, stop_agreed,
                            sync_buffers)
from ml.data.download import DownloadError
from ml.evaluate.report import predict_logits, report_from_logits, serving_section
from ml.train.libc import keep_freed_memory
from ml.train.finetune import FINETUNE_EPOCHS, FINETUNE_LR_SCALE, fine_tuning, initial_model
from ml.nets.modelfile import gallery_files, write_model_dir
from ml.nets.models import count_parameters
from ml.nets.optim import Lookahead, lr_factor, make_optimizer, set_lr
from ml.train.presets import PRESETS, add_hyperparameter_flags, preset_with_flags
from ml.train.progress import EpochMeter, terminal_line
from ml.evaluate.serving_policy import merged
from ml.train.training_data import training_data

EXIT_STOPPED = 3  # stopped by SIGTERM/SIGINT after writing a resume checkpoint
NORM = (CIFAR_MEAN, CIFAR_STD)


def resolve_config(args) -> dict:
    """The run's full settings: the preset with the flags given, then seed, data and split."""
    config = preset_with_flags(args)
    config.update(seed=args.seed, limit=args.limit, val_size=args.val_size, split_seed=args.split_seed,
                  data=str(args.data), classes=args.classes,
                  extra_data=str(args.extra_data) if args.extra_data else None, init_from=None)
    if args.init_from:
        fine_tuning(config, args)
    return config


def train_step(model, optimizer, scaler, images, labels, config, generator, amp_dtype):
    """One optimiser step on a batch already on the training device (uint8 images): normalise,
    augment, forward, loss (plus outlier exposure's uniform-target loss on the synthetic outliers
    appended to the batch, and the consistency loss between the first images and their resampled
    twins), backward, step. Returns (logits of the real images, loss)."""
    x, outliers, twins = training_inputs(images, config, generator)
    n = len(labels)
    with autocast(images.device, amp_dtype):
        out = model(x).float()
        logits = out[:n]
        loss = F.cross_entropy(logits, labels, label_smoothing=config["label_smoothing"])
        if outliers:
            loss = loss - config["outlier_weight"] * F.log_softmax(out[n:n + outliers], 1).mean()
        if twins:
            loss = loss + config["consistency"] * jensen_shannon(logits[:twins], out[n + outliers:])
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return logits, loss


def jensen_shannon(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between two views' softmax answers (AugMix's consistency
    loss, Hendrycks et al., 2020): 0 when they agree, at most log 2; gradients reach both views."""
    p_a, p_b = logits_a.softmax(1), logits_b.softmax(1)
    log_mixture = ((p_a + p_b) / 2).clamp_min(1e-7).log()
    return (F.kl_div(log_mixture, p_a, reduction="batchmean") + F.kl_div(log_mixture, p_b, reduction="batchmean")) / 2


def augmentation_generator(config, state: TrainState, device, rank) -> torch.Generator:
    """This epoch's translation generator, or the stopped one's where a resume left off."""
    generator = torch.Generator(device=device)
    if state.aug_rng is not None:
        generator.set_state(state.aug_rng)
    else:
        generator.manual_seed(config["seed"] * 7919 + state.epoch * 31 + rank)
    return generator


def train_one_epoch(model, split, config, state: TrainState, device, amp_dtype, emit, stop, world, rank,
                    client_bank=None):
    """One pass over the training split (or what is left of it when resuming mid-epoch) with
    `model` (state.model, or its DistributedDataParallel wrapper); `client_bank` holds the upload
    round trips that serving_aug swaps in. Returns (mean loss, accuracy, stopped)."""
    epoch = state.epoch
    shuffle = torch.Generator().manual_seed(config["seed"] * 1000 + epoch)
    aug_gen = augmentation_generator(config, state, device, rank)
    if client_bank is not None:
        split = client_mix(split, client_bank, config["serving_aug"], config["seed"], epoch)
    if config["flip"]:
        split = alternating_flip(split, config["seed"], epoch)
    batches = iterate_batches(split, config["batch_size"], shuffle, shard=(rank, world))
    steps_per_epoch = math.ceil(len(split) / config["batch_size"])
    total_steps = steps_per_epoch * config["epochs"]
    log_every = max(1, steps_per_epoch // 20)
    if config["arch"] == "airnet":
        state.model.whiten.bias.requires_grad = epoch < config["whiten_bias_epochs"]
    model.train()
    meter = EpochMeter()
    for step_in_epoch, (images, labels) in enumerate(batches):
        if step_in_epoch < state.step_in_epoch:
            continue  # resuming: these batches were done before the stop
        images, y = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        set_lr(state.optimizer, lr_factor(config["schedule"], state.global_step, total_steps))
        logits, loss = train_step(model, state.optimizer, state.scaler, images, y, config, aug_gen, amp_dtype)
        state.global_step += 1
        state.step_in_epoch = step_in_epoch + 1
        if state.lookahead is not None:
            state.lookahead.after_step(state.model, state.global_step, total_steps)
        meter.add(loss.item(), (logits.argmax(1) == y).sum().item(), len(y))
        if state.global_step % log_every == 0 or step_in_epoch + 1 == steps_per_epoch:
            now = time.perf_counter()
            emit({"type": "step", "epoch": epoch + 1, "epochs": config["epochs"],
                  "step": step_in_epoch + 1, "steps_per_epoch": steps_per_epoch,
                  "global_step": state.global_step, "total_steps": total_steps,
                  **meter.window(now, state.elapsed_before + now - state.start_time,
                                 state.optimizer.param_groups[0]["lr"], state.global_step / total_steps, world)})
        if stop_agreed(stop, world, device):
            state.aug_rng = aug_gen.get_state()
            return (*meter.result(), True)
    state.aug_rng = None
    return (*meter.result(), False)


def new_state(config, dataset, device, amp_dtype) -> TrainState:
    """The model to train (initial_model), its optimizer, scaler and lookahead."""
    model = initial_model(config, dataset)
    model = model.to(device, memory_format=torch.channels_last)
    return TrainState(model, make_optimizer(model, config),
                      torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16),
                      Lookahead(model) if config["lookahead"] else None)


def validate(state: TrainState, dataset, device, amp_dtype, world) -> dict:
    """The epoch's validation report. The training clock pauses for it, as airbench's does, so
    train_seconds compares with its published times; the pauses are kept in eval_seconds."""
    eval_start = time.perf_counter()
    sync_buffers(state.model, world)
    logits = predict_logits(state.model, dataset.val, device, amp_dtype=amp_dtype, norm=NORM)
    report = report_from_logits(logits, dataset.val.labels, dataset.classes, dataset.val_name)
    paused = time.perf_counter() - eval_start
    state.eval_seconds += paused
    state.start_time += paused
    return report


def train(config: dict, out_dir, checkpoint_path=None, resume=False, device="auto", emit=print,
          stop: StopFlag = None, download=False, suite=True):
    """Train per `config` and write the model folder `out_dir`. Returns the card ({} on ranks
    other than 0), or None when stopped early (a resume checkpoint is then at `checkpoint_path`).
    `download` fetches CIFAR-10 into config["data"] first when that folder holds no dataset."""
    rank, world = distributed_info()
    device = pick_device(device)
    init_distributed(device, world)
    stop = stop or StopFlag()
    keep_freed_memory()
    wall_start = time.perf_counter()
    torch.manual_seed(config["seed"])
    dataset, client_bank, base_train_images = training_data(config, download, rank, world)
    if world > 1 and config["batch_size"] % world:
        raise ValueError(f"batch size {config['batch_size']} is not divisible by {world} processes")
    amp_dtype = pick_amp_dtype(config["precision"], device)
    state = new_state(config, dataset, device, amp_dtype)
    model = state.model
    if resume and checkpoint_path and Path(checkpoint_path).is_file():
        state.from_checkpoint(load_checkpoint(checkpoint_path, config))
        emit({"type": "resumed", "epoch": state.epoch + 1, "global_step": state.global_step})
    train_model = model
    if world > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    log = emit if rank == 0 else (lambda record: None)
    log({"type": "start", "preset": config["preset"], "arch": config["arch"], "device": str(device),
         "precision": str(amp_dtype or "fp32"), "world_size": world, "train_images": len(dataset.train),
         "eval_images": len(dataset.val), "eval_split": dataset.val_name, "epochs": config["epochs"],
         "parameters": count_parameters(model)})
    state.start_time = time.perf_counter()
    while state.epoch < config["epochs"]:
        train_loss, train_acc, stopped = train_one_epoch(
            train_model, dataset.train, config, state, device, amp_dtype, log, stop, world, rank, client_bank)
        if stopped:
            if rank == 0 and checkpoint_path:
                state.elapsed_before += time.perf_counter() - state.start_time
                save_checkpoint(checkpoint_path, state.to_checkpoint(config))
            log({"type": "stopped", "epoch": state.epoch + 1, "global_step": state.global_step,
                 "checkpoint": str(checkpoint_path) if checkpoint_path else None})
            return None
        val = validate(state, dataset, device, amp_dtype, world)
        elapsed = state.elapsed_before + time.perf_counter() - state.start_time
        record = {"type": "epoch", "epoch": state.epoch + 1, "epochs": config["epochs"],
                  "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "elapsed_s": elapsed}
        state.history.append(record)
        log(record)
        state.epoch += 1
        state.step_in_epoch = 0
    if state.lookahead is not None:
        state.lookahead.update(model, decay=1.0)  # end on the slow average itself (airbench)
        sync_buffers(model, world)
    train_seconds = state.elapsed_before + time.perf_counter() - state.start_time
    # Final report in full precision, as served; the temperature makes its probabilities honest.
    temperature, report, val_logits, val_features = calibrated_report(model, dataset, device, config["tta"], NORM)
    emit({"type": "done", "rank": rank, "accuracy": report["accuracy"], "eval_split": dataset.val_name,
          "train_seconds": train_seconds, "weights_digest": weights_digest(model)})
    card = {}
    if rank == 0:
        card = make_card(model, config, dataset, report, state.history, train_seconds,
                         state.eval_seconds, time.perf_counter() - wall_start, device, amp_dtype, world)
        card["data"]["extra_images"] = len(dataset.train) - base_train_images if config.get("extra_data") else 0
        card, novelty_files = fit_novelty_and_measure(model, dict(card, temperature=temperature), dataset,
                                                      device, val_logits, val_features, config["data"], suite)
        # the precision and TTA policy the server will use, measured here (speeds: ml.evaluate)
        card = merged(card, serving_section(model, card, device, dataset.val, Path(config["data"]) / ".cache",
                                            speed=False))
        write_model_dir(out_dir, model, card, {**gallery_files(dataset.val.images, report, dataset.train,
                                                               dataset.classes), **novelty_files})
        if checkpoint_path and Path(checkpoint_path).is_file():
            os.remove(checkpoint_path)
    finish_distributed(world)
    return card


def build_parser():
    p = argparse.ArgumentParser(description="Train a CIFAR-10 classifier; writes a model folder "
                                "(model.safetensors + card.json).")
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
        card = train(config, out, checkpoint, args.resume, args.device, emit, stop, args.download, args.suite)
    except DownloadError as error:
        sys.exit(str(error))
    if card is None:
        sys.exit(EXIT_STOPPED)
    if card:
        print(f"wrote {out}: {card['evaluation']['split']} accuracy {card['evaluation']['accuracy']:.4f} "
              f"in {card['training']['train_seconds']:.0f}s of training")


if __name__ == "__main__":
    main()
