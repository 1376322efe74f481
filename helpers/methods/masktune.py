"""MaskTune (Taghanaki et al., NeurIPS 2022): mask what the ERM model looked at, fine-tune one
epoch.

Masks are *keep-masks*: 1 where a pixel survives, 0 where it is erased. Every rule takes saliency
maps (N, H, W) with values in [0, 1] (the output of :func:`helpers.saliency.saliency_maps`) and
erases the most salient pixels:

* ``official`` — the official code: per image, μ and σ of the *positive* saliency values only; erase
  pixels with A > μ + 2σ (the parameter, default 2, is the multiple of σ);
* ``threshold`` τ — erase pixels with A > τ;
* ``top_k`` k — erase pixels above the (1 − k) quantile of the image's map, about the top fraction
  k;
* ``mean`` s — erase pixels with A > s · mean(A).

The last three are the variants of the popular re-implementation (there on 8×8 maps; here on the
28×28 maps).
"""

from __future__ import annotations

import torch
from torch import nn

from helpers.tensordata import TensorData
from helpers.train import History, fit, supervised_step

MASK_RULES = ("official", "threshold", "top_k", "mean")


def _check_maps(maps: torch.Tensor) -> None:
    if maps.dim() != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {tuple(maps.shape)}")


def official_keep_mask(maps: torch.Tensor, n_std: float = 2.0) -> torch.Tensor:
    """Keep A ≤ μ + n_std·σ, with μ and σ over each map's positive values (zeros are ignored)."""
    _check_maps(maps)
    if n_std < 0:
        raise ValueError(f"n_std must be >= 0, got {n_std}")
    flat = maps.flatten(1).float()
    pos = flat > 0
    n = pos.sum(1).clamp_min(1)
    mu = (flat * pos).sum(1) / n
    var = (((flat - mu[:, None]) ** 2) * pos).sum(1) / n  # population std, as numpy's nanstd
    tau = mu + n_std * var.sqrt()
    keep = (flat <= tau[:, None]) | ~pos.any(1, keepdim=True)  # an all-zero map erases nothing
    return keep.view_as(maps)


def threshold_keep_mask(maps: torch.Tensor, tau: float) -> torch.Tensor:
    """Keep A ≤ τ."""
    _check_maps(maps)
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must lie in [0, 1], got {tau}")
    return maps <= tau


def top_k_keep_mask(maps: torch.Tensor, k: float) -> torch.Tensor:
    """Erase A > q, q = the (1 − k) quantile of each map (linear interpolation, as
    numpy.percentile)."""
    _check_maps(maps)
    if not 0.0 < k < 1.0:
        raise ValueError(f"k must lie in (0, 1), got {k}")
    flat = maps.flatten(1).float()
    # per-row quantile by sorting (torch.quantile refuses inputs above 16M elements, e.g. 48k maps
    # of 28×28)
    ranked = flat.sort(dim=1).values
    pos = (1.0 - k) * (flat.shape[1] - 1)
    lo, frac = int(pos), pos - int(pos)
    hi = min(lo + 1, flat.shape[1] - 1)
    q = ranked[:, lo] + (ranked[:, hi] - ranked[:, lo]) * frac
    return (flat <= q[:, None]).view_as(maps)


def mean_keep_mask(maps: torch.Tensor, s: float) -> torch.Tensor:
    """Keep A ≤ s · mean(A) (mean over the whole map)."""
    _check_maps(maps)
    if s <= 0:
        raise ValueError(f"s must be > 0, got {s}")
    mean = maps.flatten(1).float().mean(1)
    return maps <= s * mean[:, None, None]


def keep_mask(
    maps: torch.Tensor, rule: str = "official", param: float | None = None
) -> torch.Tensor:
    """Dispatch to one rule; ``param`` is n_std / τ / k / s (None means the official n_std of 2)."""
    if rule == "official":
        return official_keep_mask(maps, 2.0 if param is None else param)
    if param is None:
        raise ValueError(f"param is required for rule {rule!r}")
    if rule == "threshold":
        return threshold_keep_mask(maps, param)
    if rule == "top_k":
        return top_k_keep_mask(maps, param)
    if rule == "mean":
        return mean_keep_mask(maps, param)
    raise ValueError(f"rule must be one of {list(MASK_RULES)}, got {rule!r}")


def apply_mask(data: TensorData, keep: torch.Tensor) -> TensorData:
    """Masked copy of ``data``: image × keep-mask on every channel; labels, bias and extras
    unchanged."""
    if keep.shape != (data.x.shape[0], *data.x.shape[-2:]):
        raise ValueError(
            f"keep must have shape {(data.x.shape[0], *data.x.shape[-2:])}, got {tuple(keep.shape)}"
        )
    x = data.x * keep.to(device=data.x.device, dtype=data.x.dtype).unsqueeze(1)
    return TensorData(x, data.y, data.bias, dict(data.extras))


def erased_fraction(keep: torch.Tensor) -> float:
    """Mean fraction of pixels erased per image."""
    return float(1.0 - keep.float().mean())


def resume_sgd(model: nn.Module, state: dict, *, lr: float) -> torch.optim.SGD:
    """The official fine-tuning optimiser: SGD (momentum 0.9, weight decay 1e-4) holding its **own
    copy** of the ERM optimiser's ``state`` (momentum buffers, learning rate).

    ``Optimizer.load_state_dict`` keeps the given tensors when they already sit on the right device
    with the right dtype, so two optimisers loaded from one state dict would share, and both update
    in place, the same momentum buffers: every masking variant would start from the previous
    variant's momentum. The deep copy gives each variant the ERM state itself."""
    import copy

    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    opt.load_state_dict(copy.deepcopy(state))
    return opt


def masktune_finetune(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    masked_train: TensorData,
    *,
    batch_size: int,
    seed: int,
    evaluate=None,
    desc: str = "MaskTune",
) -> History:
    """MaskTune's second stage: exactly ONE epoch of cross-entropy over the masked training set
    only.

    ``model`` and ``optimizer`` should hold what the official code loads: the *last* ERM weights
    with their SGD state (momentum buffers, learning rate), although the masks came from the *best*
    checkpoint. The model trains in train mode, so BatchNorm statistics adapt to the masked images;
    no learning-rate step.
    """
    if len(masked_train) == 0:
        raise ValueError("masked_train is empty")
    return fit(
        masked_train,
        supervised_step(model, optimizer),
        epochs=1,
        batch_size=batch_size,
        modules=model,
        seed=seed,
        evaluate=evaluate,
        desc=desc,
    )
