"""CAML on frozen features: bias-amplified adapter, k-means pseudo-groups, adaptive angular-margin
loss.

Stage 1 trains a small adapter (D → 128 tanh → 2) with cross-entropy, class-balanced sampling and a
high weight decay, and keeps the epoch with the best *training* accuracy (the most fitted, most
biased head). Stage 2 clusters the adapter's L2-normalised hidden features with k-means; each
cluster's class composition is a row of the margin table ``M``. Stage 3 trains a fresh cosine head
(D → 128 ReLU, 2 normalised class vectors) with an ArcFace-style margin on both class logits, the
margins redrawn at each step as ``1 - N(M[c_i, j], sigma^2)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.data.feature_folder import FeatureSplit
from helpers.models import Adapter, MarginHead
from helpers.seed import derive_seed
from helpers.tensordata import TensorData
from helpers.train import (
    Batch,
    TrainConfig,
    TrainResult,
    accuracy_on,
    class_balanced,
    fit_keep_best,
    shuffled,
    supervised_step,
)


def as_tensordata(split: FeatureSplit, **extras: torch.Tensor) -> TensorData:
    """A FeatureSplit as the TensorData that :func:`helpers.train.fit` slices (bias kept for
    evaluation only)."""
    return TensorData(split.feats, split.targets, split.bias, dict(extras))


# ------------------------------------------------------------------------------------- stage 3 loss
def angular_margin_logits(cos: torch.Tensor, margins: torch.Tensor, scale: float) -> torch.Tensor:
    """``s * cos(theta + m)`` on every class logit, with ArcFace's fallback ``cos - m sin(pi - m)``
    past pi."""
    if cos.shape != margins.shape:
        raise ValueError(
            f"margins must have the shape of cos {tuple(cos.shape)}, got {tuple(margins.shape)}"
        )
    if scale <= 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    cos = cos.float().clamp(-1.0, 1.0)
    margins = margins.float()
    sin = torch.sqrt((1.0 - cos * cos).clamp(0.0, 1.0))
    phi = cos * torch.cos(margins) - sin * torch.sin(margins)
    fallback = cos - margins * torch.sin(math.pi - margins)
    phi = torch.where(cos > torch.cos(math.pi - margins), phi, fallback)
    return scale * phi


def adaptive_margin_loss(
    cos: torch.Tensor, y: torch.Tensor, margins: torch.Tensor, scale: float
) -> torch.Tensor:
    """Cross-entropy on :func:`angular_margin_logits`; with all margins 0 it is plain scaled-cosine
    CE."""
    return F.cross_entropy(angular_margin_logits(cos, margins, scale), y)


def sample_margins(
    table: torch.Tensor, clusters: torch.Tensor, sigma: float, gen: torch.Generator | None = None
) -> torch.Tensor:
    """Per-sample margins ``m_ij = 1 - eps_ij``, ``eps_ij ~ N(M[c_i, j], sigma^2)``; shape (B,
    2)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    mean = table[clusters]
    dev = gen.device if gen is not None else mean.device
    noise = torch.randn(mean.shape, generator=gen, device=dev).to(mean.device) if sigma > 0 else 0.0
    return 1.0 - (mean + sigma * noise)


# ------------------------------------------------------------------------------------ stage 1 and 2
def train_adapter(
    model: Adapter,
    train: TensorData,
    cfg: TrainConfig,
    *,
    balanced: bool = True,
    select_on: TensorData | None = None,
    desc: str = "adapter",
) -> TrainResult:
    """Train an :class:`Adapter` with Adam and CE; keep the epoch with the best accuracy on
    ``select_on``.

    Stage 1 (bias amplification): ``balanced=True`` (class-balanced sampling), ``select_on=None`` —
    selection by *training* accuracy. ERM: ``balanced=False`` and ``select_on=val`` (plain
    validation accuracy).
    """
    opt = cfg.adam(model.parameters())
    ref = train if select_on is None else select_on
    result = fit_keep_best(
        model,
        train,
        supervised_step(model, opt),
        cfg,
        "select_acc",
        lambda: accuracy_on(model, ref),
        sampler=class_balanced(train.y) if balanced else shuffled,
        desc=desc,
    )
    return result


def pseudo_groups(
    features: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    random_state: int = 0,
) -> dict:
    """K-means (``n_init=10``) on ``features``; returns cluster ids, the margin table and NMI
    diagnostics.

    ``table[c, j]`` = share of class j inside cluster c (rows sum to 1; an empty cluster gets 0.5 /
    0.5).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score as nmi

    if int(k) < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if int(k) > len(features):
        raise ValueError(f"k must be <= the number of samples ({len(features)}), got {k}")
    x = features.detach().float().cpu().numpy()
    labels = KMeans(n_clusters=int(k), n_init=10, random_state=random_state).fit(x).labels_
    y = targets.cpu().numpy()
    table = np.full((int(k), 2), 0.5)
    sizes = np.zeros(int(k), dtype=int)
    for c in range(int(k)):
        members = labels == c
        sizes[c] = int(members.sum())
        if sizes[c]:
            table[c, 1] = float(y[members].mean())
            table[c, 0] = 1.0 - table[c, 1]
    out = {
        "clusters": torch.as_tensor(labels, dtype=torch.long),
        "table": torch.as_tensor(table, dtype=torch.float32),
        "sizes": sizes.tolist(),
        "nmi_target": float(nmi(y, labels)),
    }
    if bias is not None:
        b = bias.cpu().numpy()
        out["nmi_bias"] = float(nmi(b, labels))
        out["bias_share"] = [
            float(b[labels == c].mean()) if sizes[c] else float("nan") for c in range(int(k))
        ]
    return out


def train_caml(
    model: MarginHead,
    train: TensorData,
    val: TensorData,
    clusters: torch.Tensor,
    table: torch.Tensor,
    cfg: TrainConfig,
    *,
    sigma: float,
    scale: float,
    clip: float = 0.25,
    desc: str = "CAML",
) -> TrainResult:
    """Stage 3: adaptive margin loss, Adam, gradient clipping; keep the epoch with the best plain
    val accuracy."""
    if len(clusters) != len(train):
        raise ValueError(
            f"clusters must have one id per training sample ({len(train)}), got {len(clusters)}"
        )
    if clip <= 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    opt = cfg.adam(model.parameters())
    # on a CUDA device the noise is drawn there (no CPU->GPU copy per step); elsewhere from the CPU
    # stream
    gen = torch.Generator(
        device=train.device if train.device.type == "cuda" else "cpu"
    ).manual_seed(derive_seed(cfg.seed, "caml", "noise"))
    clusters, table = clusters.to(train.device), table.to(train.device)

    def step(batch: Batch) -> dict:
        m = sample_margins(table, clusters[batch.idx], sigma, gen)
        loss = adaptive_margin_loss(model(batch.x), batch.y, m, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        return {"loss": loss}

    result = fit_keep_best(
        model,
        train,
        step,
        cfg,
        "val_acc",
        lambda: accuracy_on(model, val),
        desc=desc,
    )
    return result


__all__ = [
    "as_tensordata",
    "angular_margin_logits",
    "adaptive_margin_loss",
    "sample_margins",
    "train_adapter",
    "pseudo_groups",
    "train_caml",
]
