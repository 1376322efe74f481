"""The one seed helper of the book: the same seed gives the same metrics on CPU."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and ask for deterministic kernels.

    Returns a CPU ``torch.Generator`` seeded with ``seed`` for code that wants its own stream
    (batch order, dataset construction) independent of how many random numbers other code drew.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - libraries that draw from numpy's global stream
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    # cuBLAS needs this workspace setting for deterministic matmuls on CUDA.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    # warn_only: a few CUDA kernels (e.g. some scatter ops) have no deterministic version.
    torch.use_deterministic_algorithms(True, warn_only=True)
    return torch.Generator().manual_seed(seed)


def generator(seed: int) -> torch.Generator:
    """A fresh CPU generator for one purpose (e.g. building a dataset), without touching global
    state."""
    return torch.Generator().manual_seed(int(seed))
