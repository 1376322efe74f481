"""Biased MNIST (Bahng et al., 2020): the background colour of a digit predicts its class with
probability ρ.

Construction, following ``clovaai/rebias`` (``datasets/colour_mnist.py``) but seeded:

* stroke pixels (grey value ≠ 0) become pure white, background pixels (== 0) take the sample's
  colour;
* per class y, a fraction ρ (``int(n·ρ)`` samples, as the reference) gets the class's own colour
  ``y``; the remaining r samples are cut into consecutive chunks of ``ceil(r / n_confusing_labels)``
  and each chunk gets one of the colours ``(y+1) % 10 … (y+n_confusing_labels) % 10`` in a shuffled
  order;
* images are scaled to [-1, 1] (ToTensor + Normalize(0.5, 0.5) in the reference).

Evaluation sets come from the MNIST test split: ``biased`` (ρ=1), ``unbiased`` (ρ=0.1, the
"Unbiased" column of the paper's Table 1) and ``conflicting`` (ρ=0, every sample on another class's
colour).
"""

from __future__ import annotations

import math

import torch

from helpers.data.mnist import load_mnist
from helpers.seed import derive_seed, generator
from helpers.tensordata import TensorData, random_subset

# RGB 0-255, index = colour (bias) label; class y's aligned colour is index y.
PALETTE = torch.tensor(
    [
        (255, 0, 0),  # red
        (0, 255, 0),  # green
        (0, 0, 255),  # blue
        (225, 225, 0),  # yellow (225, as the reference)
        (225, 0, 225),  # magenta
        (0, 255, 255),  # cyan
        (255, 128, 0),  # orange
        (255, 0, 128),  # pink
        (128, 0, 255),  # violet
        (128, 128, 128),  # grey
    ],
    dtype=torch.uint8,
)
COLOUR_NAMES = [
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "orange",
    "pink",
    "violet",
    "grey",
]
EVAL_RHOS = {"biased": 1.0, "unbiased": 0.1, "conflicting": 0.0}


def _check_rho(rho: float, n_confusing_labels: int) -> None:
    if not 0.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho must lie in [0, 1], got {rho!r}")
    if not isinstance(n_confusing_labels, int) or not 1 <= n_confusing_labels <= 9:
        raise ValueError(f"n_confusing_labels must be an int in [1, 9], got {n_confusing_labels!r}")


def assign_colours(
    labels: torch.Tensor,
    rho: float,
    n_confusing_labels: int = 9,
    gen: torch.Generator | None = None,
) -> torch.Tensor:
    """Colour (bias) label per sample, as the reference assigns them, but drawn from ``gen``."""
    _check_rho(rho, n_confusing_labels)
    gen = gen if gen is not None else torch.Generator().manual_seed(0)
    colours = torch.empty_like(labels)
    for y in range(10):
        idx = (labels == y).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_aligned = int(len(idx) * rho)  # floor, as the reference's int(n * rho)
        colours[idx[:n_aligned]] = y
        rest = idx[n_aligned:]
        if len(rest) == 0:
            continue
        others = torch.tensor([(y + k) % 10 for k in range(1, n_confusing_labels + 1)])
        others = others[torch.randperm(n_confusing_labels, generator=gen)]
        chunk = math.ceil(len(rest) / n_confusing_labels)
        for k, start in enumerate(range(0, len(rest), chunk)):
            colours[rest[start : start + chunk]] = others[k]
    return colours


def n_conflicting(labels: torch.Tensor, rho: float) -> int:
    """Number of bias-conflicting samples ``assign_colours`` produces: Σ_y (n_y − int(n_y·ρ))."""
    counts = torch.bincount(labels, minlength=10).tolist()
    return sum(n - int(n * rho) for n in counts)


def colour_background(images: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """uint8 digits (N, 28, 28) → float (N, 3, 28, 28) in [-1, 1]: white strokes on the colour
    ``PALETTE[c]``."""
    fg = (images != 0).unsqueeze(1)  # (N, 1, H, W)
    bg = PALETTE[colours].to(torch.float32).div(255.0)[:, :, None, None]  # (N, 3, 1, 1)
    rgb = torch.where(fg, torch.ones(()), bg)  # (N, 3, H, W)
    return rgb.mul(2.0).sub(1.0)


def to_display(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images back to [0, 1] for plotting."""
    return x.add(1.0).div(2.0).clamp(0.0, 1.0)


def make_biased_mnist(
    images: torch.Tensor,
    labels: torch.Tensor,
    rho: float,
    *,
    seed: int,
    n_confusing_labels: int = 9,
) -> TensorData:
    """Colour one MNIST split at correlation ``rho``; deterministic for ``seed``."""
    colours = assign_colours(labels, rho, n_confusing_labels, generator(seed))
    return TensorData(colour_background(images, colours), labels.clone(), colours)


def biased_mnist(
    rho: float,
    *,
    seed: int = 0,
    n_confusing_labels: int = 9,
    train_size: int | None = None,
    test_size: int | None = None,
    val_size: int | None = None,
    val_rho: float = 0.1,
    root=None,
) -> dict[str, TensorData]:
    """Training set at ``rho`` plus the ``biased`` / ``unbiased`` / ``conflicting`` test sets.

    ``train_size`` / ``test_size`` take a random subset (same seed ⇒ same subset) for fast profiles.
    ``val_size`` holds that many MNIST *training* digits out of the training set (before
    ``train_size`` subsets the rest) and colours them at ``val_rho`` as the set ``val``: with the
    default 0.1 an unbiased validation set, which a practitioner only has if they can collect
    colour-balanced labelled data.
    """
    mnist = load_mnist(root)
    pool = torch.arange(len(mnist["train_y"]))
    if val_size is not None:
        held = random_subset(len(pool), val_size, derive_seed(seed, "val", "subset"), "val_size")
        if len(held) >= len(pool) - 10:
            raise ValueError(f"val_size={val_size} leaves fewer than 10 training images")
        val_x, val_y = mnist["train_x"][held], mnist["train_y"][held]
        free = torch.ones(len(pool), dtype=torch.bool)
        free[held] = False
        pool = pool[free]
    keep = pool[
        random_subset(len(pool), train_size, derive_seed(seed, "train", "subset"), "train_size")
    ]
    tr_x, tr_y = mnist["train_x"][keep], mnist["train_y"][keep]
    keep = random_subset(
        len(mnist["test_y"]), test_size, derive_seed(seed, "test", "subset"), "test_size"
    )
    te_x, te_y = mnist["test_x"][keep], mnist["test_y"][keep]
    sets = {
        "train": make_biased_mnist(
            tr_x,
            tr_y,
            rho,
            seed=derive_seed(seed, "train", "colours"),
            n_confusing_labels=n_confusing_labels,
        )
    }
    if val_size is not None:
        sets["val"] = make_biased_mnist(
            val_x,
            val_y,
            val_rho,
            seed=derive_seed(seed, "val", "colours"),
            n_confusing_labels=n_confusing_labels,
        )
    for name, eval_rho in EVAL_RHOS.items():
        sets[name] = make_biased_mnist(
            te_x,
            te_y,
            eval_rho,
            seed=derive_seed(seed, name, "colours"),
            n_confusing_labels=n_confusing_labels,
        )
    return sets
