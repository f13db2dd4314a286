"""Where training and evaluation run, and at which precision."""
from __future__ import annotations

import torch


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def autocast_dtype(device: torch.device, amp: bool | None) -> torch.dtype | None:
    """bf16 where the hardware has it (no loss scaling needed), else fp16 on CUDA; None = fp32.
    `amp=None` means: on for CUDA, off for CPU (CPU autocast is slower on most CPUs)."""
    if amp is None:
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16
