"""The training loop: a run's steps, epochs and validation, its stop and resume, and the finish
that writes the model folder (ml/calibrate/finish.py).

The pieces live beside it, as in torchvision's classification reference: the command line in
ml/train/cli.py, stop flag and multi-process helpers in ml/train/distributed.py, checkpoints and
TrainState in ml/train/checkpoint.py, the model card in ml/train/card.py, the starting model
(fresh or `--init-from` a trained one) in ml/train/finetune.py, what a run trains on in
ml/train/training_data.py; optimisers, schedule and lookahead in ml/nets/optim.py.
"""

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from ml.calibrate.finish import FinishSettings, calibrate, finish
from ml.data.augment import client_mix, training_inputs
from ml.data.batches import alternating_flip, iterate_batches
from ml.data.sources import CIFAR_MEAN, CIFAR_STD
from ml.evaluate.report import report_from_logits
from ml.nets.cardmodel import CardModel, predict_outputs
from ml.nets.device import autocast, pick_amp_dtype, pick_device
from ml.nets.models import count_parameters
from ml.nets.optim import Lookahead, lr_factor, make_optimizer, set_lr
from ml.train.card import model_card, run_record, weights_digest
from ml.train.checkpoint import TrainState, load_checkpoint, save_checkpoint
from ml.train.distributed import (StopFlag, distributed_info, finish_distributed, init_distributed, stop_agreed,
                                  sync_buffers)
from ml.train.finetune import initial_model
from ml.train.libc import keep_freed_memory
from ml.train.progress import EpochMeter
from ml.train.training_data import training_data

NORM = (CIFAR_MEAN, CIFAR_STD)


@dataclass
class RunSettings:
    """How a run is carried out, beside what it trains (the config, which a resume must match)."""
    checkpoint: Optional[Path] = None  # where a stop writes the resume checkpoint (none: not written)
    resume: bool = False               # continue from `checkpoint` when it exists
    device: str = "auto"               # auto (CUDA, then MPS, then CPU), cpu, cuda, mps
    download: bool = False             # fetch CIFAR-10 into config["data"] first when it holds no dataset
    suite: bool = True                 # end by measuring the robustness suite and far-out sets (minutes)
    checkpoint_every_epoch: bool = False  # also write `checkpoint` after every epoch but the last, so a
                                          # run killed without warning resumes from its last epoch


@dataclass
class Run:
    """This process's part of a run: what the steps, the epochs and the card read."""
    config: dict
    device: torch.device
    amp_dtype: Optional[torch.dtype]   # autocast dtype, None for fp32
    rank: int
    world: int
    emit: Callable                     # progress records; every rank's "done"
    stop: StopFlag
    wall_start: float

    def log(self, record: dict):
        """A progress record of the run as a whole: rank 0's."""
        if self.rank == 0:
            self.emit(record)


def start_run(config: dict, device: str, emit, stop) -> Run:
    """Join the process group where there is one, pick the device and precision, tune the allocator."""
    rank, world = distributed_info()
    device = pick_device(device)
    init_distributed(device, world)
    keep_freed_memory()
    return Run(config, device, pick_amp_dtype(config["precision"], device), rank, world, emit,
               stop or StopFlag(), time.perf_counter())


def train_step(model, state: TrainState, batch, config: dict, generator, amp_dtype):
    """One optimiser step of state.optimizer (and its scaler) on a batch (uint8 images, labels)
    already on the training device, through `model` (state.model or its DDP wrapper): normalise,
    augment, forward, loss (plus outlier exposure's uniform-target loss on the synthetic outliers
    appended to the batch, and the consistency loss between the first images and their resampled
    twins), backward, step. Returns (logits of the real images, loss)."""
    images, labels = batch
    x, outliers, twins = training_inputs(images, config, generator)
    n = len(labels)
    with autocast(images.device, amp_dtype):
        out = model(x).float()
        logits = out[:n]
        scored = logit_normalised(out, config.get("logit_norm", 0.0))
        loss = F.cross_entropy(scored[:n], labels, label_smoothing=config["label_smoothing"])
        if outliers:
            loss = loss - config["outlier_weight"] * F.log_softmax(scored[n:n + outliers], 1).mean()
        if twins:
            loss = loss + config["consistency"] * jensen_shannon(logits[:twins], out[n + outliers:])
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    return logits, loss


def logit_normalised(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """LogitNorm (Wei et al., ICML 2022): the losses see each row of logits scaled to norm 1/tau,
    so training cannot lower them by growing the logits' norm, which makes every input, known or
    not, look confident; tau 0 leaves the logits as they are."""
    if not tau:
        return logits
    return logits / (tau * (logits.norm(dim=1, keepdim=True) + 1e-7))


def jensen_shannon(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between two views' softmax answers (AugMix's consistency
    loss, Hendrycks et al., 2020): 0 when they agree, at most log 2; gradients reach both views."""
    p_a, p_b = logits_a.softmax(1), logits_b.softmax(1)
    log_mixture = ((p_a + p_b) / 2).clamp_min(1e-7).log()
    return (F.kl_div(log_mixture, p_a, reduction="batchmean") + F.kl_div(log_mixture, p_b, reduction="batchmean")) / 2


def augmentation_generator(run: Run, state: TrainState) -> torch.Generator:
    """This epoch's translation generator, or the stopped one's where a resume left off."""
    generator = torch.Generator(device=run.device)
    if state.aug_rng is not None:
        generator.set_state(state.aug_rng)
    else:
        generator.manual_seed(run.config["seed"] * 7919 + state.epoch * 31 + run.rank)
    return generator


def epoch_batches(run: Run, state: TrainState, split, client_bank):
    """This epoch's shuffled batches of this process's shard: a share of the images swapped for
    their upload round trips (`client_bank`, serving_aug) and flipped on alternate epochs."""
    config, epoch = run.config, state.epoch
    if client_bank is not None:
        split = client_mix(split, client_bank, config["serving_aug"], config["seed"], epoch)
    if config["flip"]:
        split = alternating_flip(split, config["seed"], epoch)
    shuffle = torch.Generator().manual_seed(config["seed"] * 1000 + epoch)
    return iterate_batches(split, config["batch_size"], shuffle, shard=(run.rank, run.world))


def train_one_epoch(run: Run, model, state: TrainState, split, client_bank=None):
    """One pass over the training split (or what is left of it when resuming mid-epoch) with
    `model` (state.model, or its DistributedDataParallel wrapper); `client_bank` holds the upload
    round trips that serving_aug swaps in. Returns (mean loss, accuracy, stopped)."""
    config = run.config
    aug_gen = augmentation_generator(run, state)
    batches = epoch_batches(run, state, split, client_bank)
    steps_per_epoch = math.ceil(len(split) / config["batch_size"])
    total_steps = steps_per_epoch * config["epochs"]
    log_every = max(1, steps_per_epoch // 20)
    if config["arch"] == "airnet":
        state.model.whiten.bias.requires_grad = state.epoch < config["whiten_bias_epochs"]
    model.train()
    meter = EpochMeter()
    for step_in_epoch, (images, labels) in enumerate(batches):
        if step_in_epoch < state.step_in_epoch:
            continue  # resuming: these batches were done before the stop
        batch = images.to(run.device, non_blocking=True), labels.to(run.device, non_blocking=True)
        set_lr(state.optimizer, lr_factor(config["schedule"], state.global_step, total_steps))
        logits, loss = train_step(model, state, batch, config, aug_gen, run.amp_dtype)
        state.global_step += 1
        state.step_in_epoch = step_in_epoch + 1
        if state.lookahead is not None:
            state.lookahead.after_step(state.model, state.global_step, total_steps)
        meter.add(loss.item(), (logits.argmax(1) == batch[1]).sum().item(), len(batch[1]))
        if state.global_step % log_every == 0 or step_in_epoch + 1 == steps_per_epoch:
            now = time.perf_counter()
            run.log({"type": "step", "epoch": state.epoch + 1, "epochs": config["epochs"],
                     "step": step_in_epoch + 1, "steps_per_epoch": steps_per_epoch,
                     "global_step": state.global_step, "total_steps": total_steps,
                     **meter.window(now, state.elapsed_before + now - state.start_time,
                                    state.optimizer.param_groups[0]["lr"], state.global_step / total_steps,
                                    run.world)})
        if stop_agreed(run.stop, run.world, run.device):
            state.aug_rng = aug_gen.get_state()
            return (*meter.result(), True)
    state.aug_rng = None
    return (*meter.result(), False)


def new_state(run: Run, dataset) -> TrainState:
    """The model to train (initial_model), its optimizer, scaler and lookahead."""
    model = initial_model(run.config, dataset)
    model = model.to(run.device, memory_format=torch.channels_last)
    return TrainState(model, make_optimizer(model, run.config),
                      torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16),
                      Lookahead(model) if run.config["lookahead"] else None)


def validate(run: Run, state: TrainState, dataset) -> dict:
    """The epoch's validation report. The training clock pauses for it, as airbench's does, so
    train_seconds compares with its published times; the pauses are kept in eval_seconds."""
    eval_start = time.perf_counter()
    sync_buffers(state.model, run.world)
    logits = predict_outputs(state.model, dataset.val.images, run.device, NORM, amp_dtype=run.amp_dtype)[0]
    report = report_from_logits(logits, dataset.val.labels, dataset.classes, dataset.val_name)
    paused = time.perf_counter() - eval_start
    state.eval_seconds += paused
    state.start_time += paused
    return report


def train_epochs(run: Run, state: TrainState, dataset, client_bank, checkpoint, every_epoch=False) -> bool:
    """The epochs left, each followed by validation; False when stopped (the resume checkpoint
    then written at `checkpoint`, by rank 0; with `every_epoch`, after every epoch but the last too)."""
    config, model = run.config, state.model
    train_model = model
    if run.world > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        train_model = DistributedDataParallel(model, device_ids=device_ids)
    run.log({"type": "start", "preset": config["preset"], "arch": config["arch"], "device": str(run.device),
             "precision": str(run.amp_dtype or "fp32"), "world_size": run.world, "train_images": len(dataset.train),
             "eval_images": len(dataset.val), "eval_split": dataset.val_name, "epochs": config["epochs"],
             "parameters": count_parameters(model)})
    state.start_time = time.perf_counter()
    while state.epoch < config["epochs"]:
        train_loss, train_acc, stopped = train_one_epoch(run, train_model, state, dataset.train, client_bank)
        if stopped:
            if run.rank == 0 and checkpoint:
                state.elapsed_before += time.perf_counter() - state.start_time
                save_checkpoint(checkpoint, state.to_checkpoint(config))
            run.log({"type": "stopped", "epoch": state.epoch + 1, "global_step": state.global_step,
                     "checkpoint": str(checkpoint) if checkpoint else None})
            return False
        val = validate(run, state, dataset)
        elapsed = state.elapsed_before + time.perf_counter() - state.start_time
        record = {"type": "epoch", "epoch": state.epoch + 1, "epochs": config["epochs"],
                  "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "elapsed_s": elapsed}
        state.history.append(record)
        run.log(record)
        state.epoch += 1
        state.step_in_epoch = 0
        if every_epoch and checkpoint and run.rank == 0 and state.epoch < config["epochs"]:
            save_epoch_checkpoint(state, config, checkpoint)
    if state.lookahead is not None:
        state.lookahead.update(model, decay=1.0)  # end on the slow average itself (airbench)
        sync_buffers(model, run.world)
    return True


def save_epoch_checkpoint(state: TrainState, config: dict, checkpoint):
    """The checkpoint of a run between two epochs (the training clock so far counted in, the live
    state untouched): resuming from it gives the weights of a run never stopped."""
    saved = state.to_checkpoint(config)
    saved["elapsed_before"] = state.elapsed_before + time.perf_counter() - state.start_time
    save_checkpoint(checkpoint, saved)


def finish_run(run: Run, state: TrainState, dataset, out_dir, settings: RunSettings, extra_images: int) -> dict:
    """Calibrate the trained model and report it on every rank; on rank 0 write the model folder
    (ml/calibrate/finish.py) and remove the resume checkpoint. Returns the card ({} elsewhere)."""
    train_seconds = state.elapsed_before + time.perf_counter() - state.start_time
    # Final report in full precision, as served; the temperature makes its probabilities honest.
    card_model = CardModel(state.model, model_card(run.config, state.model, dataset), run.device)
    calibration = calibrate(card_model, dataset)
    run.emit({"type": "done", "rank": run.rank, "accuracy": calibration.report["accuracy"],
              "eval_split": dataset.val_name, "train_seconds": train_seconds,
              "weights_digest": weights_digest(state.model)})
    card = {}
    if run.rank == 0:
        card_model = card_model.with_card(**run_record(run, state, calibration.report, train_seconds))
        card_model.card["data"]["extra_images"] = extra_images
        card = finish(out_dir, card_model, dataset, calibration,
                      FinishSettings(run.config["data"], suite=settings.suite, serving=True))
        if settings.checkpoint and Path(settings.checkpoint).is_file():
            os.remove(settings.checkpoint)
    finish_distributed(run.world)
    return card


def train(config: dict, out_dir, settings: RunSettings = None, emit=print, stop: StopFlag = None):
    """Train per `config` and write the model folder `out_dir`. Returns the card ({} on ranks
    other than 0), or None when stopped early (a resume checkpoint is then at settings.checkpoint)."""
    settings = settings or RunSettings()
    run = start_run(config, settings.device, emit, stop)
    torch.manual_seed(config["seed"])
    dataset, client_bank, base_train_images = training_data(config, settings.download, run.rank, run.world)
    if run.world > 1 and config["batch_size"] % run.world:
        raise ValueError(f"batch size {config['batch_size']} is not divisible by {run.world} processes")
    state = new_state(run, dataset)
    if settings.resume and settings.checkpoint and Path(settings.checkpoint).is_file():
        state.from_checkpoint(load_checkpoint(settings.checkpoint, config))
        emit({"type": "resumed", "epoch": state.epoch + 1, "global_step": state.global_step})
    if not train_epochs(run, state, dataset, client_bank, settings.checkpoint, settings.checkpoint_every_epoch):
        return None
    extra_images = len(dataset.train) - base_train_images if config.get("extra_data") else 0
    return finish_run(run, state, dataset, out_dir, settings, extra_images)
