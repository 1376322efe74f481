"""Device choice and the per-device training settings (bf16 autocast, channels_last on CUDA only)."""

from __future__ import annotations

import contextlib
import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def deterministic_cublas() -> None:
    """Ask cuBLAS for its deterministic workspace. It must happen before the first CUDA matmul (cuBLAS reads it
    once), so it runs when this module is imported (every training path imports it) and in ``start_chapter``;
    an explicit setting of the user's is kept."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


deterministic_cublas()


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``prefer`` if given (``"cpu"``, ``"cuda"``, ``"mps"``), else the best available: cuda > mps > cpu."""
    if prefer not in (None, "", "auto"):
        dev = torch.device(prefer)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={prefer!r} was requested but CUDA is not available")
        if dev.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={prefer!r} was requested but MPS is not available")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    """Human-readable device name for results files, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op elsewhere (CPU runs stay plain float32 and bit-reproducible)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def full_precision(device: torch.device):
    """Autocast switched off, for statistics and losses that bf16 would distort (kernel matrices, HSIC,
    evaluation); tensors created inside are float32 when their inputs are."""
    device = torch.device(device)
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # no autocast is ever active there


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last helps cuDNN convolutions under bf16; on CPU it only costs layout conversions."""
    return torch.channels_last if torch.device(device).type == "cuda" else torch.contiguous_format


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device`` in that device's preferred memory format."""
    return model.to(device=device, memory_format=memory_format(device))
