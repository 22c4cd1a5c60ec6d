"""Where and in what precision the networks run: the device, the autocast dtype, and the one
autocast context that training, evaluation, serving and the benchmark all enter."""

import os

import torch


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


def autocast(device: torch.device, amp_dtype=None):
    """Autocast to `amp_dtype` on `device`; a disabled (full-precision) context for None."""
    # torch.autocast wants a real dtype even when disabled; which one then does not matter.
    return torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None)
