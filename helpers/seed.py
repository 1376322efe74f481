"""The one seed helper of the book: the same seed gives the same metrics on CPU."""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import torch

# torch.manual_seed takes at most an unsigned 64-bit integer (derived seeds are below 2**63)
SEED_MAX = 2**64 - 1


def _check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if seed > SEED_MAX:
        raise ValueError(f"seed must be <= 2**64 - 1 (what torch accepts), got {seed!r}")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) and ask for deterministic kernels.

    The global streams then initialise the models; every other random draw (data, batch order,
    augmentation) has its own generator from :func:`generator` / :func:`derive_seed`.
    """
    _check_seed(seed)
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


def derive_seed(seed: int, *purpose: str | int) -> int:
    """The seed of one random stream of a run, e.g. ``derive_seed(seed, "test", "subset")``.

    The only way the book derives seeds: a hash of the run's seed and the purpose, so every stream
    is independent of every other, also across run seeds (with offsets such as ``seed + 1``, run
    seed 1's training subset would be run seed 0's test subset).
    """
    _check_seed(seed)
    if not purpose:
        raise ValueError("derive_seed needs a purpose (a name for the stream)")
    digest = hashlib.sha256(repr((seed, *purpose)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # below 2**63: a valid torch seed


def generator(seed: int, *purpose: str | int) -> torch.Generator:
    """A fresh CPU generator, without touching global state: seeded with ``seed`` itself, or with
    ``derive_seed(seed, *purpose)`` when a purpose is given."""
    return torch.Generator().manual_seed(derive_seed(seed, *purpose) if purpose else int(seed))
