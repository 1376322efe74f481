"""Two-class MNIST with a coloured corner patch: the spurious set-up of MaskTune (Taghanaki et al.,
2022).

Digits 0–4 form class 0 and digits 5–9 class 1. Grey digits are repeated to RGB and scaled to [0, 1]
(ToTensor, no mean/std normalisation, as the official code). A ``patch_size``×``patch_size`` square
of colour ``colour`` in the top-left corner marks a fraction ``1 − conflict_ratio`` of class 0 and a
fraction ``conflict_ratio`` of class 1 in training, so the patch predicts class 0.

Which images get the patch (``conflict_order``):

* ``"digit"`` (official code): the samples of a class are taken in digit order (0, 1, …, 4 and 5, …,
  9) and the first ``round(k)`` get the patch. The unpatched 1 % of class 0 are therefore all 4s,
  the patched 1 % of class 1 all 5s.
* ``"random"`` (the popular re-implementation): a seeded random choice of the same number of
  samples.

Evaluation sets from the MNIST test split: ``raw`` (no patch anywhere) and ``biased`` (patch on
every class-1 image and on no class-0 image: the reverse of training). Every set carries ``bias`` =
1 where the image has the patch and ``extras["digit"]``, the original digit.
"""

from __future__ import annotations

import torch

from helpers.data.mnist import load_mnist
from helpers.seed import derive_seed, generator
from helpers.tensordata import TensorData, random_subset

OFFICIAL_COLOUR = (255, 0, 0)  # red, hard-coded for two classes in the official code
OFFICIAL_PATCH_SIZE = 4
REIMPL_COLOUR = (0, 0, 255)  # blue 6×6 patch of the student re-implementation
REIMPL_PATCH_SIZE = 6
CLASS_NAMES = ["0–4", "5–9"]


def _check(patch_size: int, colour, conflict_ratio: float, conflict_order: str) -> None:
    if not isinstance(patch_size, int) or isinstance(patch_size, bool) or not 1 <= patch_size <= 14:
        raise ValueError(f"patch_size must be an int in [1, 14], got {patch_size!r}")
    if len(colour) != 3 or any(not 0 <= int(c) <= 255 for c in colour):
        raise ValueError(f"colour must be three values in [0, 255], got {colour!r}")
    if not 0.0 <= float(conflict_ratio) <= 1.0:
        raise ValueError(f"conflict_ratio must lie in [0, 1], got {conflict_ratio!r}")
    if conflict_order not in ("digit", "random"):
        raise ValueError(f"conflict_order must be 'digit' or 'random', got {conflict_order!r}")


def two_class_labels(digits: torch.Tensor) -> torch.Tensor:
    """Digits 0–4 → class 0, digits 5–9 → class 1."""
    return (digits >= 5).long()


def choose_patched(
    digits: torch.Tensor, conflict_ratio: float, conflict_order: str = "digit", seed: int = 0
) -> torch.Tensor:
    """Boolean (N,): which training images carry the patch.

    Class 0 gets ``round((1 − r)·n0)`` patches and class 1 ``round(r·n1)``, as the official
    ``add_color_bias_to_images``; ``conflict_order`` picks them in digit order or at random.
    """
    _check(OFFICIAL_PATCH_SIZE, OFFICIAL_COLOUR, conflict_ratio, conflict_order)
    labels = two_class_labels(digits)
    patched = torch.zeros(len(digits), dtype=torch.bool)
    gen = generator(seed)
    for cls, share in ((0, 1.0 - conflict_ratio), (1, conflict_ratio)):
        idx = (labels == cls).nonzero().flatten()
        if conflict_order == "digit":
            # stable sort by digit = the official concatenation of digits 0, 1, …, 9 in dataset
            # order
            idx = idx[torch.sort(digits[idx], stable=True).indices]
        else:
            idx = idx[torch.randperm(len(idx), generator=gen)]
        patched[idx[: round(share * len(idx))]] = True
    return patched


def render(
    images: torch.Tensor,
    patched: torch.Tensor,
    patch_size: int = OFFICIAL_PATCH_SIZE,
    colour=OFFICIAL_COLOUR,
) -> torch.Tensor:
    """uint8 digits (N, 28, 28) → float RGB (N, 3, 28, 28) in [0, 1], corner patch where
    ``patched``."""
    x = images.to(torch.float32).div(255.0).unsqueeze(1).repeat(1, 3, 1, 1)
    rgb = torch.tensor(colour, dtype=torch.float32).div(255.0)[:, None, None]
    x[patched, :, :patch_size, :patch_size] = rgb
    return x


def _make(images, digits, patched, patch_size, colour) -> TensorData:
    return TensorData(
        render(images, patched, patch_size, colour),
        two_class_labels(digits),
        patched.long(),
        {"digit": digits.clone()},
    )


def patch_mnist(
    *,
    seed: int = 0,
    conflict_ratio: float = 0.01,
    conflict_order: str = "digit",
    patch_size: int = OFFICIAL_PATCH_SIZE,
    colour=OFFICIAL_COLOUR,
    val_size: int = 12000,
    train_size: int | None = None,
    test_size: int | None = None,
    root=None,
) -> dict[str, TensorData]:
    """``train`` / ``val`` (same bias, held out after patching, as the official code) / ``raw`` /
    ``biased``.

    ``train_size`` and ``test_size`` take seeded random subsets of the MNIST splits first (fast
    profiles); the patch is then assigned within the subset, so the 99 / 1 proportions and the digit
    ordering still hold.
    """
    _check(patch_size, colour, conflict_ratio, conflict_order)
    mnist = load_mnist(root)
    keep = random_subset(
        len(mnist["train_y"]), train_size, derive_seed(seed, "train", "subset"), "train_size"
    )
    tr_x, tr_d = mnist["train_x"][keep], mnist["train_y"][keep]
    if not 0 <= val_size < len(tr_d):
        raise ValueError(
            f"val_size must lie in [0, {len(tr_d) - 1}] for {len(tr_d)} training images, got "
            f"{val_size}"
        )
    full = _make(
        tr_x,
        tr_d,
        choose_patched(tr_d, conflict_ratio, conflict_order, derive_seed(seed, "patched")),
        patch_size,
        colour,
    )
    perm = torch.randperm(len(full), generator=generator(seed, "val", "split"))
    sets = {
        "train": full[perm[val_size:].sort().values],
        "val": full[perm[:val_size].sort().values],
    }
    keep = random_subset(
        len(mnist["test_y"]), test_size, derive_seed(seed, "test", "subset"), "test_size"
    )
    te_x, te_d = mnist["test_x"][keep], mnist["test_y"][keep]
    sets["raw"] = _make(te_x, te_d, torch.zeros(len(te_d), dtype=torch.bool), patch_size, colour)
    sets["biased"] = _make(te_x, te_d, two_class_labels(te_d) == 1, patch_size, colour)
    return sets
