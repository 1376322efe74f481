"""Device choice and the per-device training settings (bf16 autocast where supported, channels_last
on CUDA and, for the networks where it measured faster, on AVX-512 CPUs)."""

from __future__ import annotations

import contextlib
import os

import torch

CUBLAS_WORKSPACE = ":4096:8"


def deterministic_cublas() -> None:
    """Ask cuBLAS for its deterministic workspace. It must happen before the first CUDA matmul
    (cuBLAS reads it once), so it runs when this module is imported (every training path imports it)
    and in ``start_chapter``; an explicit setting of the user's is kept."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)


deterministic_cublas()


def pick_device(prefer: str | None = None) -> torch.device:
    """Return ``prefer`` if given (``"cpu"``, ``"cuda"``, ``"mps"``), else the best available: cuda
    > mps > cpu."""
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
    """Human-readable device name for results files, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2
    threads)``."""
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads != 1 else ''})"
    return device.type


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The one precision decision: the autocast dtype ``fit`` trains in on ``device``, None for
    float32.

    bf16 on CUDA GPUs with native bf16 (Ampere and later); float32 on older GPUs, because float16
    would need a gradient scaler around every step function's own ``backward``/``optimizer.step``
    (the bf16 emulation of those GPUs is slower than float32); float32 on CPU and MPS, so CPU runs
    stay bit-reproducible.
    """
    if torch.device(device).type != "cuda":
        return None
    try:
        native = torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.4 has no emulation argument and reports native support only
        native = torch.cuda.is_bf16_supported()
    return torch.bfloat16 if native else None


def autocast(device: torch.device):
    """Autocast in :func:`autocast_dtype`'s precision; a no-op where that is float32."""
    device = torch.device(device)
    dtype = autocast_dtype(device)
    if dtype is not None:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def full_precision(device: torch.device):
    """Autocast switched off, for statistics and losses that bf16 would distort (kernel matrices,
    HSIC, evaluation); tensors created inside are float32 when their inputs are."""
    device = torch.device(device)
    if device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()  # no autocast is ever active there


def cpu_has_avx512() -> bool:
    """Whether PyTorch's CPU kernels run at the AVX-512 level here (oneDNN's NHWC convolutions are
    fast there; on AVX2 they measured slower than NCHW)."""
    return torch.backends.cpu.get_cpu_capability().upper().startswith("AVX512")


def memory_format(
    device: torch.device, model: torch.nn.Module | None = None
) -> torch.memory_format:
    """The layout the loop trains ``model`` in on ``device``.

    channels_last on CUDA (cuDNN's bf16 convolutions want it). On CPU only for a network that opts
    in (class attribute ``cpu_channels_last``) on an AVX-512 CPU: chapter 02's Fisher step ran
    1.82× faster in NHWC on an AVX-512 Xeon and 0.97–1.0× (no gain) on an AVX2 EPYC
    (``benchmarks/memory_format.py``). The layout changes the float rounding, so it is decided by
    the machine's instruction set, never by a timing taken at run time.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.channels_last
    if device.type == "cpu" and getattr(model, "cpu_channels_last", False) and cpu_has_avx512():
        return torch.channels_last
    return torch.contiguous_format


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move a model to ``device`` in the layout :func:`memory_format` chooses for it there."""
    return model.to(device=device, memory_format=memory_format(device, model))
