"""Stopping on a signal and the multi-process (torchrun) helpers: every rank stops at the same
step and ends with the same model."""

import os
import signal

import torch
import torch.distributed as dist


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
    """(rank, world size) as torchrun sets them; (0, 1) for a plain process."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    return int(os.environ.get("RANK", 0)), world


def init_distributed(device: torch.device, world: int):
    """Join the process group (NCCL on GPUs, Gloo on CPUs) and pin this rank's GPU."""
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)


def wait_for_all(world: int):
    """Block until every rank gets here (rank 0 is then done writing what the others read)."""
    if world > 1:
        dist.barrier()


def finish_distributed(world: int):
    """Wait for every rank (rank 0 writes the model folder), then leave the process group."""
    wait_for_all(world)
    if world > 1:
        dist.destroy_process_group()


def stop_agreed(flag: StopFlag, world: int, device) -> bool:
    """All ranks stop at the same step if any rank was asked to."""
    if world == 1:
        return flag.requested
    t = torch.tensor([1.0 if flag.requested else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def sync_buffers(model, world):
    """BatchNorm statistics are per process; take rank 0's so every rank holds one model."""
    if world > 1:
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)
