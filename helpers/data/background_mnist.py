"""Background-coloured MNIST: white strokes on a coloured or patterned background, digits 5–9
biased.

Construction (after the "MNIST synthetic experiments" code base, re-implemented and seeded):

* a pixel is *background* iff its raw grey value is 0; every other pixel is stroke and becomes pure
  white (255 in all three channels), so the digit is binarised;
* the background is filled with a colour or pattern; ten *pool* colours :data:`POOL` (index =
  digit);
* in the training and dev splits the *biased* digits (5–9 by default) always sit on their own pool
  colour; the other digits, and every test image, get a background drawn by a *mode*:

  ``pure`` (a random pool colour), ``random_pure`` (a random RGB colour, channels 0..224),
  ``strips`` (rows with ``row % 5 < 2`` in one random colour, the other rows black), ``noise``
  (i.i.d. uniform 0..255 per pixel and channel) or ``mixture`` (per image one of noise / random_pure
  / strips);
* ``pure_*`` test sets put every image on one fixed colour (see :data:`SINGLE_COLOURS`).

Split as in the reference: MNIST training images 0–49,999, permuted with the seed, give 40k train
and 10k dev; images 50,000–59,999 are the test set (the official MNIST test set is not used). Unlike
the reference, whose colours and noise come from the unseeded global RNG, every background here is
drawn from a generator seeded from ``seed``, so the same seed gives the same images.

Images are float tensors (N, 3, 28, 28) in [-1, 1] (``ToTensor`` + ``Normalize(0.5, 0.5)`` of the
reference). Each set carries ``extras["mask"]`` (N, 1, 28, 28) bool — the stroke mask — so paired
training can redraw backgrounds on the fly; pool-coloured sets carry ``bias`` = the pool index of
the background.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from helpers.data.biased_mnist import to_display  # noqa: F401 - same [-1, 1] image convention; chapters call B.to_display
from helpers.data.mnist import load_mnist
from helpers.seed import generator
from helpers.tensordata import TensorData

POOL = torch.tensor(
    [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [225, 225, 0],
        [225, 0, 225],
        [0, 255, 255],
        [255, 0, 195],
        [195, 0, 255],
        [195, 195, 195],
        [255, 195, 0],
    ],
    dtype=torch.uint8,
)
"""The reference's ``COLOUR_MAP``: row d is the colour of digit d's background when d is biased."""

POOL_NAMES = [
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "pink",
    "violet",
    "grey",
    "orange",
]
BIASED_DIGITS = (5, 6, 7, 8, 9)
BIAS_MODES = {"partial": BIASED_DIGITS, "all": tuple(range(10)), "none": ()}
MODES = ("pure", "random_pure", "strips", "noise", "mixture")
MIXTURE_METHODS = ("noise", "random_pure", "strips")
# channels of random colours are drawn from 0..224 (no near-white backgrounds)
RANDOM_COLOUR_MAX = 225


def _single_colours() -> dict[str, tuple[int, int, int]]:
    out = {"pure_black": (0, 0, 0), "pure_special": (0, 168, 225)}
    for chans in ("1", "2", "3", "12", "13", "23", "123"):
        for prefix, value in (("pure", 225), ("pure_half_", 128)):
            rgb = [0, 0, 0]
            for c in chans:
                rgb[int(c) - 1] = value
            out[f"{prefix}{chans}"] = tuple(rgb)
    return out


SINGLE_COLOURS = _single_colours()
"""Fixed-colour test sets: digits in the name select channels (1 = R, 2 = G, 3 = B), 225 each, or
128 for ``pure_half_*``. (The reference's ``pure_half_23`` repeats ``pure_half_13``; here it is [0,
128, 128].)"""

TEST_MODES = MODES + tuple(SINGLE_COLOURS)


def _check_mode(name: str, mode: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if mode not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {mode!r}")


def stroke_mask(raw: torch.Tensor) -> torch.Tensor:
    """(N, 28, 28) uint8 MNIST → (N, 1, 28, 28) bool, True on the stroke (grey value ≠ 0)."""
    if raw.dim() != 3:
        raise ValueError(f"raw must have shape (N, H, W), got {tuple(raw.shape)}")
    return (raw != 0).unsqueeze(1)


_POOL_ON: dict[str, torch.Tensor] = {}


def _pool_on(device: torch.device) -> torch.Tensor:
    """:data:`POOL` on ``device``, copied there once (a copy per batch would wait for the GPU every
    step)."""
    key = str(device)
    if key not in _POOL_ON:
        _POOL_ON[key] = POOL.to(device)
    return _POOL_ON[key]


def _fill(colours: torch.Tensor, size: int = 28) -> torch.Tensor:
    """(N, 3) colours → (N, 3, size, size) uniform backgrounds."""
    return colours[:, :, None, None].expand(-1, -1, size, size)


def backgrounds(
    mode: str, n: int, gen: torch.Generator, *, size: int = 28, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """``n`` backgrounds (n, 3, size, size) uint8 drawn by ``mode`` from ``gen`` (on ``gen``'s
    device).

    ``mode`` is one of :data:`MODES` or a fixed colour of :data:`SINGLE_COLOURS`.
    """
    _check_mode("mode", mode, TEST_MODES)
    gdev = gen.device
    u8 = dict(dtype=torch.uint8, device=gdev)
    if mode in SINGLE_COLOURS:
        out = _fill(torch.tensor(SINGLE_COLOURS[mode], **u8).expand(n, 3), size)
    elif mode == "pure":
        idx = torch.randint(0, len(POOL), (n,), generator=gen, device=gdev)
        out = _fill(_pool_on(gdev)[idx], size)
    elif mode == "random_pure":
        out = _fill(torch.randint(0, RANDOM_COLOUR_MAX, (n, 3), generator=gen, **u8), size)
    elif mode == "strips":
        colour = _fill(torch.randint(0, RANDOM_COLOUR_MAX, (n, 3), generator=gen, **u8), size)
        rows = (torch.arange(size, device=gdev) % 5 < 2)[None, None, :, None]
        out = colour * rows
    elif mode == "noise":
        out = torch.randint(0, 256, (n, 3, size, size), generator=gen, **u8)
    else:  # mixture: each image picks one of MIXTURE_METHODS
        pick = torch.randint(0, len(MIXTURE_METHODS), (n,), generator=gen, device=gdev)
        out = torch.empty((n, 3, size, size), **u8)
        for k, method in enumerate(MIXTURE_METHODS):
            # draw only the images that picked ``method`` (the seeded CPU stream)
            if gdev.type == "cpu":
                sel = (pick == k).nonzero().flatten()
                out[sel] = backgrounds(method, len(sel), gen, size=size, device=gdev)
            else:  # nonzero would wait for the GPU: draw for all, keep those that picked ``method``
                drawn = backgrounds(method, n, gen, size=size, device=gdev)
                out = torch.where((pick == k)[:, None, None, None], drawn, out)
    return out.contiguous().to(device)


def pool_backgrounds(
    n: int, gen: torch.Generator, size: int = 28
) -> tuple[torch.Tensor, torch.Tensor]:
    """Like ``backgrounds("pure", …)`` but also returns the drawn pool indices (n,)."""
    idx = torch.randint(0, len(POOL), (n,), generator=gen, device=gen.device)
    return _fill(_pool_on(gen.device)[idx], size).contiguous(), idx


def compose(mask: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """White (255) stroke where ``mask`` (N, 1, H, W) is True, ``background`` (N, 3, H, W) uint8
    elsewhere."""
    white = torch.full_like(background, 255)
    return torch.where(mask, white, background)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float [-1, 1]."""
    return images.float().div(127.5).sub(1.0)


def colour_split(
    raw: torch.Tensor,
    labels: torch.Tensor,
    mode: str,
    gen: torch.Generator,
    *,
    biased_digits: Sequence[int] = (),
) -> TensorData:
    """Colour one split: digits in ``biased_digits`` on their own pool colour, all others drawn by
    ``mode``.

    Returns a :class:`TensorData` with ``x`` in [-1, 1], the stroke mask in ``extras["mask"]`` and,
    when every background is a pool colour (``mode == "pure"``), ``bias`` = the pool index of each
    background.
    """
    _check_mode("mode", mode, TEST_MODES)
    mask = stroke_mask(raw)
    n = len(labels)
    biased = torch.zeros(n, dtype=torch.bool)
    for d in biased_digits:
        biased |= labels == d
    free = (~biased).nonzero().flatten()
    bg = torch.empty((n, 3, raw.shape[-2], raw.shape[-1]), dtype=torch.uint8)
    bias = torch.full((n,), -1, dtype=torch.long)
    bias[biased] = labels[biased]
    bg[biased] = _fill(POOL[labels[biased]], raw.shape[-1])
    if mode == "pure":
        fill, idx = pool_backgrounds(len(free), gen, raw.shape[-1])
        bg[free], bias[free] = fill, idx
    else:
        bg[free] = backgrounds(mode, len(free), gen, size=raw.shape[-1])
    has_pool = bool((bias >= 0).all())
    return TensorData(
        to_float(compose(mask, bg)), labels.clone(), bias if has_pool else None, {"mask": mask}
    )


def split_indices(seed: int) -> dict[str, torch.Tensor]:
    """Indices into the MNIST training set: 40k train / 10k dev (a seeded permutation of 0–49,999)
    and the 10k test images 50,000–59,999, as in the reference."""
    perm = torch.randperm(50_000, generator=generator(seed, "split"))
    return {"train": perm[:40_000], "dev": perm[40_000:], "test": torch.arange(50_000, 60_000)}


def _size(name: str, value: int | None, limit: int) -> int:
    if value is None or value == -1:
        return limit
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
        raise ValueError(f"{name} must be an int in [1, {limit}] or -1/None for all, got {value!r}")
    return value


def build_background_mnist(
    *,
    seed: int,
    unbiased_mode: str = "pure",
    bias_mode: str = "partial",
    test_modes: Sequence[str] = ("pure",),
    train_size: int | None = None,
    dev_size: int | None = None,
    test_size: int | None = None,
    mnist: dict | None = None,
) -> dict[str, TensorData]:
    """Build ``{"train", "dev", "test_<mode>" for each test mode}``; deterministic for ``seed``.

    ``unbiased_mode`` colours the non-biased train/dev digits (``pure``, ``random_pure`` or
    ``mixture`` in the reference; any of :data:`MODES` is accepted); ``bias_mode`` is ``partial``
    (5–9), ``all`` or ``none``; test sets contain all digits, never biased. Sizes take the first
    images of each split (-1/None = all).
    """
    _check_mode("unbiased_mode", unbiased_mode, MODES)
    _check_mode("bias_mode", bias_mode, BIAS_MODES)
    for m in test_modes:
        _check_mode("test_modes", m, TEST_MODES)
    sizes = {
        "train": _size("train_size", train_size, 40_000),
        "dev": _size("dev_size", dev_size, 10_000),
        "test": _size("test_size", test_size, 10_000),
    }
    mnist = mnist if mnist is not None else load_mnist()
    idx = {k: v[: sizes[k]] for k, v in split_indices(seed).items()}
    x, y = mnist["train_x"], mnist["train_y"]
    out = {}
    # every split and test mode has its own seeded stream, so adding a test mode changes nothing
    # else
    for split in ("train", "dev"):
        gen = generator(seed, split, "colours")
        out[split] = colour_split(
            x[idx[split]], y[idx[split]], unbiased_mode, gen, biased_digits=BIAS_MODES[bias_mode]
        )
    for mode in test_modes:
        gen = generator(seed, "test", mode, "colours")
        out[f"test_{mode}"] = colour_split(x[idx["test"]], y[idx["test"]], mode, gen)
    return out


def recolour(
    mask: torch.Tensor,
    labels: torch.Tensor,
    augment_mode: str,
    gen: torch.Generator,
    *,
    biased_digits: Sequence[int] = BIASED_DIGITS,
) -> torch.Tensor:
    """A paired copy: the same strokes on a new background, float [-1, 1] on ``mask``'s device.

    Biased digits get a background drawn by ``augment_mode`` (``basic`` = a random pool colour,
    which may be the digit's own; otherwise one of :data:`MODES`); the other digits get a random
    pool colour, as the reference's "exact copies" of unbiased digits do (their colour is redrawn
    independently). ``gen`` must live on ``mask``'s device.
    """
    _check_mode("augment_mode", augment_mode, AUGMENT_MODES)
    n, size = len(labels), mask.shape[-1]
    mode = "pure" if augment_mode == "basic" else augment_mode
    bg = backgrounds(mode, n, gen, size=size, device=mask.device)
    biased = torch.zeros(n, dtype=torch.bool, device=mask.device)
    for d in biased_digits:
        biased |= labels == d
    # On CPU the check is free and skips a draw; on a GPU it would wait for the device every step,
    # so the pool colours are always drawn there (the copies are equally distributed, the stream
    # differs only then).
    if mask.device.type != "cpu" or not bool(biased.all()):
        pool_bg, _ = pool_backgrounds(n, gen, size)
        bg = torch.where(biased[:, None, None, None], bg, pool_bg.to(mask.device))
    return to_float(compose(mask, bg))


AUGMENT_MODES = ("basic", "random_pure", "strips", "noise", "mixture")


def per_colour_accuracy(pred: torch.Tensor, data: TensorData) -> torch.Tensor:
    """Accuracy per pool background colour (10,) on a pool-coloured set (``bias`` = pool index)."""
    if data.bias is None:
        raise ValueError(
            "data has no pool-colour labels (bias is None); use a pool-coloured test set"
        )
    correct = (pred.cpu() == data.y.cpu()).float()
    bias = data.bias.cpu()
    return torch.stack(
        [
            correct[bias == c].mean() if (bias == c).any() else torch.tensor(float("nan"))
            for c in range(len(POOL))
        ]
    )
