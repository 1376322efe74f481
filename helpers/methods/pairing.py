"""Paired training: each image and a copy on a new background, both classified, logits kept
consistent.

For an image x with label y and its paired copy x' (same strokes, new background), the loss is

    CE(f(x), y) + CE(f(x'), y) + λ · consistency(o, o'),

with o, o' the logits. ``consistency`` follows the reference's methods: ``l2`` (method 3, its
default) = ‖O − O'‖²_F summed over the batch and the classes (so its scale grows with the batch
size; λ = 1e-4 in the reference), ``kl`` (method 2) = mean over the batch of KL(softmax(o) ‖
softmax(o')), and ``l1`` (method 5) = (Σ |O − O'|)², the squared L1 norm of the whole batch
difference. λ = 0 gives plain paired augmentation (method 0).

The copy is redrawn for every batch from a seeded generator
(:func:`helpers.background_mnist.recolour`), so each epoch sees a new background variant of every
image; the reference draws one of ten pre-generated variants per access, which has the same effect.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from helpers.data.background_mnist import AUGMENT_MODES, BIASED_DIGITS, recolour
from helpers.seed import derive_seed
from helpers.train import Batch, StepFn

CONSISTENCY = ("l2", "kl", "l1")


def consistency_loss(
    logits: torch.Tensor, logits_copy: torch.Tensor, kind: str = "l2"
) -> torch.Tensor:
    """Consistency between the logits of the originals and of their copies (see the module
    docstring)."""
    if kind == "l2":
        return (logits - logits_copy).pow(2).sum()
    if kind == "kl":  # KL(p || q), p from the original, q from the copy
        return F.kl_div(
            F.log_softmax(logits_copy, 1),
            F.log_softmax(logits, 1),
            log_target=True,
            reduction="batchmean",
        )
    if kind == "l1":
        return (logits - logits_copy).abs().sum().pow(2)
    raise ValueError(f"consistency must be one of {list(CONSISTENCY)}, got {kind!r}")


def paired_loss(
    logits: torch.Tensor, logits_copy: torch.Tensor, y: torch.Tensor, lam: float, kind: str = "l2"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CE(original) + CE(copy) + lam · consistency; returns the total and its parts."""
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    ce, ce_copy = F.cross_entropy(logits, y), F.cross_entropy(logits_copy, y)
    cons = consistency_loss(logits.float(), logits_copy.float(), kind)
    return ce + ce_copy + lam * cons, {"ce": ce, "ce_copy": ce_copy, "consistency": cons}


def paired_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    augment_mode: str = "basic",
    lam: float = 1e-4,
    consistency: str = "l2",
    seed: int = 0,
    biased_digits=BIASED_DIGITS,
) -> StepFn:
    """Step function for :func:`helpers.train.fit`: the batch needs ``extras["mask"]`` (stroke
    masks).

    Each call draws fresh backgrounds for the copies from a generator seeded once with ``seed`` (on
    the batch's device), so the sequence of copies is reproducible and changes from epoch to epoch.
    """
    if augment_mode not in AUGMENT_MODES:
        raise ValueError(f"augment_mode must be one of {list(AUGMENT_MODES)}, got {augment_mode!r}")
    if consistency not in CONSISTENCY:
        raise ValueError(f"consistency must be one of {list(CONSISTENCY)}, got {consistency!r}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    gens: dict[str, torch.Generator] = {}

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        if "mask" not in batch.extras:
            raise ValueError("paired_step needs the stroke masks in extras['mask']")
        dev = batch.x.device
        gen = gens.get(str(dev))
        if gen is None:
            gen = gens[str(dev)] = torch.Generator(device=dev).manual_seed(
                derive_seed(seed, "paired copies")
            )
        with torch.no_grad():
            copy = recolour(
                batch.extras["mask"], batch.y, augment_mode, gen, biased_digits=biased_digits
            )
        logits, logits_copy = model(torch.cat([batch.x, copy.to(batch.x.dtype)])).chunk(2)
        loss, parts = paired_loss(logits, logits_copy, batch.y, lam, consistency)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {
            "loss": loss,
            **parts,
            "acc": (logits.argmax(1) == batch.y).float().mean(),
            "acc_copy": (logits_copy.argmax(1) == batch.y).float().mean(),
        }

    return step


def make_copies(data, augment_mode: str, seed: int, batch_size: int = 4096) -> torch.Tensor:
    """One paired copy of every image of ``data`` (for galleries and the paired dev loss)."""
    gen = torch.Generator(device=data.x.device).manual_seed(derive_seed(seed, "copies"))
    out = [
        recolour(
            data.extras["mask"][i : i + batch_size], data.y[i : i + batch_size], augment_mode, gen
        )
        for i in range(0, len(data), batch_size)
    ]
    return torch.cat(out)


def paired_dev_loss(
    model: nn.Module, data, copies: torch.Tensor, predict: Callable | None = None
) -> float:
    """Mean cross-entropy on the dev set's re-backgrounded ``copies`` (lower is better), as the
    reference scores its paired dev set. The biased originals are not scored: their loss falls
    when the model reads the background, so adding it would reward keeping the shortcut during
    model selection."""
    from helpers.train import predict as _predict

    predict = predict or _predict
    return float(F.cross_entropy(predict(model, copies), data.y))
