"""Train a CIFAR-10 classifier and write a model folder.

    python -m ml.train --preset fast --data data --out runs/fast
    torchrun --nproc-per-node 2 -m ml.train --preset fast ...      (DistributedDataParallel)

Presets: `seed` (the tutorial, unchanged); `fast` and `best` (airbench94_muon's recipe, on the
airnet of ml/models.py at two widths); `sgd` (airbench94's all-SGD recipe, the shipped model before
Muon). Every hyperparameter can be overridden by a flag. SIGTERM stops after the
current step, writes a resume checkpoint and exits with status 3; `--resume` continues.
"""

import argparse
import json
import math
import os
import platform
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ml.data import (CIFAR_MEAN, CIFAR_STD, alternating_flip, augment, iterate_batches, load_dataset,
                     normalize)
from ml.calibrate import calibrated_report
from ml.evaluate import predict_logits, report_from_logits
from ml.libc import keep_freed_memory
from ml.modelfile import write_model_dir
from ml.models import build_model, count_parameters
from ml.muon import Muon

EXIT_STOPPED = 3  # stopped by SIGTERM/SIGINT after writing a resume checkpoint

# Hyperparameters. lr is SGD's learning rate for the batch-mean loss at the preset's batch size
# (scaled linearly when only --batch-size is changed); weight_decay is SGD's (decay = lr * wd).
# The airbench numbers (lr 11.5 and wd 0.0153 per 1024 summed examples, momentum 0.85) are
# converted to that convention: lr = 11.5 / (1 + 1 / (1 - 0.85)) = 1.5, wd = 0.0153 / (7.67 * 1.5).
# airbench94_muon's SGD part (head lr 0.67 per summed example at batch 2000 with unit-std head
# weights and logits / 256; decay 0.004 per step) is the same dynamics on our head, which starts
# at the same function with logits / 9: lr = 0.67 * 2000 * (9 / 256)^2 = 1.65, wd = 0.004 / 1.65.
# muon_lr is the spectral step size of Muon's filter updates (filters keep a fixed norm);
# muon_momentum its Nesterov momentum. Both are airbench94_muon's (0.24, 0.6 at batch 2000) except in
# `best`, which halves the batch: lr by sqrt(1/2) as for adaptive optimizers, momentum 0.6 ** (1/2)
# so its average still spans about 5,000 images; SGD's lr halves by the linear rule.
# Only optimizer="muon" uses them.
PRESETS = {
    "seed": dict(  # the tutorial: SGD lr 0.001 momentum 0.9, batch size 5, 20 epochs, no augmentation
        arch="seednet", widths=None, epochs=20, batch_size=5, optimizer="sgd", lr=0.001, momentum=0.9,
        nesterov=False, weight_decay=0.0, muon_lr=0.24, muon_momentum=0.6, schedule="constant",
        label_smoothing=0.0, bias_lr_scale=1.0, whiten_bias_epochs=0, lookahead=False, flip=False,
        translate=0, tta=0, precision="fp32"),
    "fast": dict(  # airbench94_muon: Muon for conv filters, SGD for the head and BatchNorm shifts
        arch="airnet", widths=[64, 256, 256], epochs=8, batch_size=2000, optimizer="muon", lr=1.65,
        momentum=0.85, nesterov=True, weight_decay=0.00242, muon_lr=0.24, muon_momentum=0.6,
        schedule="linear", label_smoothing=0.2, bias_lr_scale=64.0, whiten_bias_epochs=3,
        lookahead=False, flip=True, translate=2, tta=2, precision="auto"),
    "sgd": dict(  # airbench94's all-SGD recipe on a wider net, 20 epochs: the shipped model before Muon
        arch="airnet", widths=[128, 384, 384], epochs=20, batch_size=1024, optimizer="sgd", lr=1.5,
        momentum=0.85, nesterov=True, weight_decay=0.00133, muon_lr=0.24, muon_momentum=0.6,
        schedule="airbench", label_smoothing=0.2, bias_lr_scale=64.0, whiten_bias_epochs=3,
        lookahead=True, flip=True, translate=2, tta=2, precision="auto"),
    "best": dict(  # the fast recipe on a wider net, 12 epochs at half the batch: the shipped model
        arch="airnet", widths=[96, 384, 384], epochs=12, batch_size=1000, optimizer="muon", lr=0.825,
        momentum=0.85, nesterov=True, weight_decay=0.00242, muon_lr=0.17, muon_momentum=0.78,
        schedule="linear", label_smoothing=0.2, bias_lr_scale=64.0, whiten_bias_epochs=3,
        lookahead=False, flip=True, translate=2, tta=2, precision="auto"),
}
WARMUP_FRACTION = 0.23        # airbench schedule: 0.2x -> 1x over this share of steps, then -> 0.07x
LOOKAHEAD_EVERY = 5           # steps between lookahead (EMA pull-back) updates
WHITENING_IMAGES = 5000       # training images used to estimate the patch covariance
# Training state a resume checkpoint carries besides model, optimizer, scaler and lookahead.
RESUMED_STATE = ("epoch", "step_in_epoch", "global_step", "elapsed_before", "eval_seconds", "history",
                 "aug_rng")


def pick_device(name: str = "auto") -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_amp_dtype(precision: str, device: torch.device):
    """bf16 autocast where the hardware has it (CPUs with AVX512-BF16/AMX, recent GPUs), fp16 on
    older GPUs, none for fp32. Returns None for full precision."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and torch.backends.mkldnn.is_available() and \
            torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.bfloat16
    return None


def resolve_config(args) -> dict:
    config = dict(PRESETS[args.preset], preset=args.preset)
    for key in list(PRESETS["fast"]):
        value = getattr(args, key, None)
        if value is not None:
            config[key] = value
    if args.batch_size is not None and args.lr is None:
        config["lr"] = PRESETS[args.preset]["lr"] * args.batch_size / PRESETS[args.preset]["batch_size"]
    config.update(seed=args.seed, limit=args.limit, val_size=args.val_size, split_seed=args.split_seed,
                  data=str(args.data))
    return config


def arch_kwargs(config: dict) -> dict:
    """The architecture's constructor arguments that a config sets (and a card records)."""
    return {"widths": config["widths"]} if config["arch"] == "airnet" else {}


def lr_factor(schedule: str, step: int, total_steps: int) -> float:
    if schedule == "constant":
        return 1.0
    if schedule == "linear":
        return 1 - step / total_steps
    warmup = max(1, int(total_steps * WARMUP_FRACTION))
    if step < warmup:
        frac = step / warmup
        return 0.2 * (1 - frac) + 1.0 * frac
    frac = (step - warmup) / max(1, total_steps - warmup)
    return 1.0 * (1 - frac) + 0.07 * frac


class Lookahead:
    """Every few steps pull the weights toward a slow exponential average (airbench)."""

    def __init__(self, model):
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model, decay: float):
        for (name, average), current in zip(self.average.items(), model.state_dict().values()):
            if current.dtype.is_floating_point:
                average.lerp_(current, 1 - decay)
                current.copy_(average)


def make_optimizer(model, config):
    """SGD for every parameter (airbench94), or Muon for the conv filters and SGD for the rest
    (airbench94_muon, which also gives the whitening bias the BatchNorm shifts' rate)."""
    # BatchNorm shifts learn `bias_lr_scale` times faster; their decay is scaled back so every
    # parameter decays by the same amount per step.
    muon = config["optimizer"] == "muon"
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    filters = [p for n, p in named if muon and p.ndim == 4]
    shifts = [p for n, p in named if "norm" in n or (muon and n == "whiten.bias")]
    taken = {id(p) for p in filters + shifts}
    others = [p for n, p in named if id(p) not in taken]
    lr, wd, scale = config["lr"], config["weight_decay"], config["bias_lr_scale"]
    groups = [dict(params=others, lr=lr, weight_decay=wd, base_lr=lr)]
    if shifts:
        groups.append(dict(params=shifts, lr=lr * scale, weight_decay=wd / scale, base_lr=lr * scale))
    if not muon:
        return torch.optim.SGD(groups, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"])
    groups.append(dict(params=filters, lr=config["muon_lr"], base_lr=config["muon_lr"],
                       momentum=config["muon_momentum"], orthogonalize=True))
    return Muon(groups, lr=lr, momentum=config["momentum"], nesterov=config["nesterov"])


def set_lr(optimizer, factor):
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor


class StopFlag:
    """Set by SIGTERM/SIGINT; training stops at the next step boundary."""

    def __init__(self):
        self.requested = False

    def install(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True


def distributed_info():
    world = int(os.environ.get("WORLD_SIZE", 1))
    return int(os.environ.get("RANK", 0)), world


def stop_agreed(flag: StopFlag, world: int, device) -> bool:
    """All ranks stop at the same step if any rank was asked to."""
    if world == 1:
        return flag.requested
    t = torch.tensor([1.0 if flag.requested else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def save_checkpoint(path, state: dict):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    # weights_only: only tensors and plain containers; never arbitrary objects
    return torch.load(path, map_location="cpu", weights_only=True)


def train_one_epoch(model, optimizer, split, config, state, device, amp_dtype, emit, stop, world, rank):
    """One pass over the training split (or what is left of it when resuming mid-epoch).
    Returns (mean loss, accuracy, stopped)."""
    epoch = state["epoch"]
    shuffle = torch.Generator().manual_seed(config["seed"] * 1000 + epoch)
    aug_gen = torch.Generator(device=device)
    aug_gen.set_state(state["aug_rng"]) if state.get("aug_rng") is not None else \
        aug_gen.manual_seed(config["seed"] * 7919 + epoch * 31 + rank)
    if config["flip"]:
        split = alternating_flip(split, config["seed"], epoch)
    batches = iterate_batches(split, config["batch_size"], shuffle, shard=(rank, world), drop_last=False)
    steps_per_epoch = math.ceil(len(split) / config["batch_size"])
    total_steps = steps_per_epoch * config["epochs"]
    log_every = max(1, steps_per_epoch // 20)
    raw = model.module if hasattr(model, "module") else model
    if config["arch"] == "airnet":
        raw.whiten.bias.requires_grad = epoch < config["whiten_bias_epochs"]
    model.train()
    window_loss, window_n, total_loss, total_correct, total_n = 0.0, 0, 0.0, 0, 0
    window_start = time.perf_counter()
    for step_in_epoch, (images, labels) in enumerate(batches):
        if step_in_epoch < state["step_in_epoch"]:
            continue  # resuming: these batches were done before the stop
        x = normalize(images.to(device, non_blocking=True))
        x = augment(x, aug_gen, config["translate"])
        y = labels.to(device, non_blocking=True)
        set_lr(optimizer, lr_factor(config["schedule"], state["global_step"], total_steps))
        with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config["label_smoothing"])
        optimizer.zero_grad(set_to_none=True)
        state["scaler"].scale(loss).backward()
        state["scaler"].step(optimizer)
        state["scaler"].update()
        state["global_step"] += 1
        state["step_in_epoch"] = step_in_epoch + 1
        if state["lookahead"] is not None and state["global_step"] % LOOKAHEAD_EVERY == 0:
            decay = 0.95 ** 5 * (state["global_step"] / total_steps) ** 3
            state["lookahead"].update(raw, decay)
        batch_loss = loss.item()
        window_loss += batch_loss * len(y)
        window_n += len(y)
        total_loss += batch_loss * len(y)
        total_correct += (logits.argmax(1) == y).sum().item()
        total_n += len(y)
        last = step_in_epoch + 1 == steps_per_epoch
        if state["global_step"] % log_every == 0 or last:
            now = time.perf_counter()
            elapsed = state["elapsed_before"] + now - state["start_time"]
            done = state["global_step"] / total_steps
            emit({"type": "step", "epoch": epoch + 1, "epochs": config["epochs"],
                  "step": step_in_epoch + 1, "steps_per_epoch": steps_per_epoch,
                  "global_step": state["global_step"], "total_steps": total_steps,
                  "loss": window_loss / window_n, "lr": optimizer.param_groups[0]["lr"],
                  "images_per_s": window_n * world / max(now - window_start, 1e-9),
                  "elapsed_s": elapsed, "eta_s": elapsed / done * (1 - done) if done else None,
                  "progress": done})
            window_loss, window_n, window_start = 0.0, 0, now
        if stop_agreed(stop, world, device):
            state["aug_rng"] = aug_gen.get_state()
            return total_loss / max(total_n, 1), total_correct / max(total_n, 1), True
    state["aug_rng"] = None
    return total_loss / max(total_n, 1), total_correct / max(total_n, 1), False


def gallery_files(images, report, dataset_train, classes, samples_per_class=8) -> dict:
    """PNG thumbnails for the dashboard: the misclassified validation images and a sample strip
    per class from the training images."""
    import io
    from PIL import Image

    def png(array_chw):
        buffer = io.BytesIO()
        Image.fromarray(array_chw.permute(1, 2, 0).numpy()).save(buffer, "PNG")
        return buffer.getvalue()

    files = {}
    for n, entry in enumerate(report["misclassified"]):
        entry["image"] = f"gallery/misclassified-{n:03d}.png"
        files[entry["image"]] = png(images[entry["index"]])
    for c, name in enumerate(classes):
        idx = (dataset_train.labels == c).nonzero().flatten()[:samples_per_class]
        if len(idx):
            strip = torch.cat(list(dataset_train.images[idx]), dim=2)
            files[f"gallery/samples-{name}.png"] = png(strip)
    return files


def train(config: dict, out_dir, checkpoint_path=None, resume=False, device="auto", emit=print,
          stop: StopFlag = None):
    """Train per `config` and write the model folder `out_dir`. Returns the card ({} on ranks
    other than 0), or None when stopped early (a resume checkpoint is then at `checkpoint_path`)."""
    rank, world = distributed_info()
    device = pick_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    stop = stop or StopFlag()
    keep_freed_memory()
    wall_start = time.perf_counter()
    torch.manual_seed(config["seed"])
    dataset = load_dataset(config["data"], val_size=config["val_size"], split_seed=config["split_seed"],
                           limit=config["limit"])
    if world > 1 and config["batch_size"] % world:
        raise ValueError(f"batch size {config['batch_size']} is not divisible by {world} processes")
    model = build_model(config["arch"], num_classes=len(dataset.classes), **arch_kwargs(config))
    if config["arch"] == "airnet":
        model.init_whitening(normalize(dataset.train.images[:WHITENING_IMAGES]))
    model = model.to(device, memory_format=torch.channels_last)
    amp_dtype = pick_amp_dtype(config["precision"], device)
    optimizer = make_optimizer(model, config)
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "elapsed_before": 0.0, "eval_seconds": 0.0,
             "history": [], "aug_rng": None, "lookahead": Lookahead(model) if config["lookahead"] else None,
             "scaler": torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)}
    if resume and checkpoint_path and Path(checkpoint_path).is_file():
        saved = load_checkpoint(checkpoint_path)
        if json.loads(saved["config"]) != config:
            raise ValueError(f"{checkpoint_path} was written with other settings; resume with the same flags")
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        state["scaler"].load_state_dict(saved["scaler"])
        if state["lookahead"] is not None:
            state["lookahead"].average = saved["lookahead"]
        for key in RESUMED_STATE:
            state[key] = saved[key]
        torch.set_rng_state(saved["torch_rng"])  # dropout masks continue as if never stopped
        emit({"type": "resumed", "epoch": state["epoch"] + 1, "global_step": state["global_step"]})
    train_model = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    log = emit if rank == 0 else (lambda record: None)
    log({"type": "start", "preset": config["preset"], "arch": config["arch"], "device": str(device),
         "precision": str(amp_dtype or "fp32"), "world_size": world, "train_images": len(dataset.train),
         "eval_images": len(dataset.val), "eval_split": dataset.val_name, "epochs": config["epochs"],
         "parameters": count_parameters(model)})
    state["start_time"] = time.perf_counter()
    norm = (CIFAR_MEAN, CIFAR_STD)
    while state["epoch"] < config["epochs"]:
        train_loss, train_acc, stopped = train_one_epoch(
            train_model, optimizer, dataset.train, config, state, device, amp_dtype, log, stop, world, rank)
        if stopped:
            if rank == 0 and checkpoint_path:
                state["elapsed_before"] += time.perf_counter() - state["start_time"]
                save_checkpoint(checkpoint_path, {
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": state["scaler"].state_dict(),
                    "lookahead": state["lookahead"].average if state["lookahead"] else None,
                    "config": json.dumps(config), "torch_rng": torch.get_rng_state(),
                    **{k: state[k] for k in RESUMED_STATE}})
            log({"type": "stopped", "epoch": state["epoch"] + 1, "global_step": state["global_step"],
                 "checkpoint": str(checkpoint_path) if checkpoint_path else None})
            return None
        eval_start = time.perf_counter()
        sync_buffers(model, world)
        logits = predict_logits(model, dataset.val, device, amp_dtype=amp_dtype, norm=norm)
        val = report_from_logits(logits, dataset.val.labels, dataset.classes, dataset.val_name)
        # The training clock pauses for validation, as airbench's does, so train_seconds compares
        # with its published times; the pauses are kept in eval_seconds.
        paused = time.perf_counter() - eval_start
        state["eval_seconds"] += paused
        state["start_time"] += paused
        elapsed = state["elapsed_before"] + time.perf_counter() - state["start_time"]
        record = {"type": "epoch", "epoch": state["epoch"] + 1, "epochs": config["epochs"],
                  "train_loss": train_loss, "train_accuracy": train_acc, "val_loss": val["loss"],
                  "val_accuracy": val["accuracy"], "elapsed_s": elapsed}
        state["history"].append(record)
        log(record)
        state["epoch"] += 1
        state["step_in_epoch"] = 0
    if state["lookahead"] is not None:
        state["lookahead"].update(model, decay=1.0)  # end on the slow average itself (airbench)
        sync_buffers(model, world)
    train_seconds = state["elapsed_before"] + time.perf_counter() - state["start_time"]
    # Final report in full precision, as served; the temperature makes its probabilities honest.
    temperature, report = calibrated_report(model, dataset, device, config["tta"], norm)
    digest = weights_digest(model)
    emit({"type": "done", "rank": rank, "accuracy": report["accuracy"], "eval_split": dataset.val_name,
          "train_seconds": train_seconds, "weights_digest": digest})
    card = {}
    if rank == 0:
        card = make_card(model, config, dataset, report, state["history"], train_seconds,
                         state["eval_seconds"], time.perf_counter() - wall_start, device, amp_dtype, world)
        card["temperature"] = temperature
        write_model_dir(out_dir, model, card, gallery_files(dataset.val.images, report, dataset.train,
                                                            dataset.classes))
        if checkpoint_path and Path(checkpoint_path).is_file():
            os.remove(checkpoint_path)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return card


def sync_buffers(model, world):
    """BatchNorm statistics are per process; take rank 0's so every rank holds one model."""
    if world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def weights_digest(model) -> str:
    import hashlib
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def make_card(model, config, dataset, report, history, train_seconds, eval_seconds, total_seconds,
              device, amp_dtype, world) -> dict:
    import torchvision
    created = datetime.now(timezone.utc)
    return {
        "name": "cifar10-" + config["arch"],
        "version": created.strftime("%Y%m%d-%H%M%S"),
        "created": created.isoformat(timespec="seconds"),
        "arch": {"name": config["arch"], "kwargs": arch_kwargs(config)},
        "parameters": count_parameters(model),
        "classes": list(dataset.classes),
        "input_size": 32,
        "normalization": {"mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "scale": "0-255 RGB"},
        "preprocess": "EXIF orientation, alpha on white, RGB; shorter side to 32 (bilinear, "
                      "antialiased), centre crop 32x32",
        "tta": config["tta"],
        "hyperparameters": config,
        "data": dict(dataset.describe(), val_size=config["val_size"], split_seed=config["split_seed"]),
        "history": history,
        "evaluation": report,
        "training": {"train_seconds": train_seconds, "eval_seconds": eval_seconds,
                     "total_seconds": total_seconds, "device": str(device),
                     "cpu": platform.processor() or platform.machine(),
                     "precision": str(amp_dtype or "torch.float32"), "world_size": world,
                     "threads": torch.get_num_threads()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": torchvision.__version__},
    }


def terminal_line(record: dict) -> str:
    kind = record["type"]
    if kind == "step":
        eta = f"{record['eta_s']:.0f}s" if record["eta_s"] is not None else "?"
        return (f"epoch {record['epoch']}/{record['epochs']} step {record['step']}/{record['steps_per_epoch']}"
                f"  loss {record['loss']:.4f}  lr {record['lr']:.4g}  {record['images_per_s']:.0f} img/s"
                f"  elapsed {record['elapsed_s']:.0f}s  eta {eta}")
    if kind == "epoch":
        return (f"epoch {record['epoch']}/{record['epochs']} done  train loss {record['train_loss']:.4f}"
                f"  val loss {record['val_loss']:.4f}  val acc {record['val_accuracy']:.4f}"
                f"  elapsed {record['elapsed_s']:.0f}s")
    return json.dumps(record)


def build_parser():
    p = argparse.ArgumentParser(description="Train a CIFAR-10 classifier; writes a model folder "
                                "(model.safetensors + card.json).")
    p.add_argument("--preset", default="fast", choices=sorted(PRESETS),
                   help="recipe: seed (the tutorial), fast (default), best (the shipped model), "
                        "sgd (airbench94's all-SGD recipe)")
    p.add_argument("--data", default="data", help="dataset root: cifar-10-batches-py or class folders")
    p.add_argument("--out", default=None, help="model folder to write (default runs/<preset>-<time>)")
    p.add_argument("--checkpoint", default=None,
                   help="resume checkpoint written on SIGTERM (default <out>.resume.pt)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--events", default=None, help="also append every progress record to this JSON-lines file")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--precision", default=None, choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype; auto = bf16 where supported")
    p.add_argument("--seed", type=int, default=0, help="random seed for init, shuffling and augmentation")
    p.add_argument("--limit", type=int, default=None, help="train on at most N images (smoke runs)")
    p.add_argument("--val-size", type=int, default=5000, help="images held out for validation")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
    p.add_argument("--arch", default=None, choices=["seednet", "airnet"], help="architecture")
    p.add_argument("--widths", type=int, nargs=3, default=None, help="airnet conv group widths")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size (images)")
    p.add_argument("--optimizer", default=None, choices=["sgd", "muon"],
                   help="sgd for every parameter, or muon for conv filters and sgd for the rest")
    p.add_argument("--lr", type=float, default=None, help="SGD learning rate for the batch-mean loss")
    p.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    p.add_argument("--nesterov", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="Nesterov momentum (true/false)")
    p.add_argument("--weight-decay", type=float, default=None, help="SGD weight decay (decay = lr * wd)")
    p.add_argument("--muon-lr", type=float, default=None, help="Muon step size for conv filters")
    p.add_argument("--muon-momentum", type=float, default=None, help="Muon's Nesterov momentum")
    p.add_argument("--schedule", default=None, choices=["constant", "airbench", "linear"],
                   help="learning-rate schedule: constant, airbench (warm-up then decay), linear (to 0)")
    p.add_argument("--label-smoothing", type=float, default=None, help="label smoothing, 0..1")
    p.add_argument("--bias-lr-scale", type=float, default=None, help="learning-rate multiplier for BN shifts")
    p.add_argument("--whiten-bias-epochs", type=int, default=None,
                   help="epochs during which the whitening layer's bias trains")
    p.add_argument("--lookahead", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="lookahead weight averaging (true/false)")
    p.add_argument("--flip", type=lambda s: s.lower() in ("1", "true", "yes"), default=None,
                   help="horizontal flips, alternating per epoch (true/false)")
    p.add_argument("--translate", type=int, default=None, help="random translation in pixels")
    p.add_argument("--tta", type=int, default=None, choices=[0, 1, 2],
                   help="test-time augmentation for the final report and serving")
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
    card = train(config, out, checkpoint, args.resume, args.device, emit, stop)
    if card is None:
        sys.exit(EXIT_STOPPED)
    if card:
        print(f"wrote {out}: {card['evaluation']['split']} accuracy {card['evaluation']['accuracy']:.4f} "
              f"in {card['training']['train_seconds']:.0f}s of training")


if __name__ == "__main__":
    main()
