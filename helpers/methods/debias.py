"""Re-weighting debiasing methods for any network: LfF, JTT, GroupDRO, group re-weighting and
re-sampling, as the losses, rules, samplers and step functions that :func:`helpers.train.fit` runs.

One implementation of each method serves both the heads on frozen features of chapter 06
(:mod:`helpers.methods.group_methods`) and the CNNs trained end to end on Biased MNIST.

* **LfF** (Nam et al. 2020): :func:`gce_loss`, :class:`LossEMA`, :func:`lff_weights`,
  :func:`lff_step` — a biased network trained with generalised CE and a debiased one trained with
  per-sample weights W = CE_B / (CE_B + CE_D) of class-normalised loss EMAs; both updated every
  step.
* **JTT** (Liu et al. 2021): :func:`jtt_error_set` (stage 1's misclassified training samples),
  :func:`jtt_weights` (the loss weight λ_up of the error set), :func:`jtt_upsampler` (stage 2's
  up-sampled epochs, as the paper's code concatenates copies of the error set).
* **GroupDRO** (Sagawa et al. 2020): :class:`GroupDRO` (q ← q·exp(η·ℓ_g), loss Σ_g q_g ℓ_g) and
  :func:`groupdro_step`; needs bias labels in training.
* **Group re-weighting / re-sampling** (SubpopBench's ReWeight / ReSample): :func:`group_weights`
  (per-sample weights ∝ 1/n_g), :func:`reweighted_step`, :func:`group_balanced` (a sampler).
* :func:`build` makes the networks' optimisers, the step and the sampler of one method by name.

Groups are g = y · num_biases + b (SubpopBench's numbering; chapter 06's g = 2y + b).
Every step keeps its state on the training device and reads nothing back to the host.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from helpers.tensordata import TensorData
from helpers.train import (
    Batch,
    EpochSampler,
    StepFn,
    predict,
    shuffled,
    supervised_step,
    weighted,
)

Optimisers = torch.optim.Optimizer | Sequence[torch.optim.Optimizer]


# ------------------------------------------------------------------------------------------- groups
def group_ids(y: torch.Tensor, bias: torch.Tensor | None, num_biases: int) -> torch.Tensor:
    """Group of each sample, g = y · num_biases + b (values are not range-checked here: this runs
    inside steps; :func:`group_counts` checks them once)."""
    if bias is None:
        raise ValueError("bias is None: this method needs bias labels (TensorData.bias)")
    if isinstance(num_biases, bool) or not isinstance(num_biases, int) or num_biases < 1:
        raise ValueError(f"num_biases must be an int >= 1, got {num_biases!r}")
    return y * num_biases + bias


def group_counts(y, bias, num_classes: int, num_biases: int) -> torch.Tensor:
    """Training count n_g of each of the ``num_classes · num_biases`` groups (CPU, int64); names the
    labels that fall outside the ranges."""
    for name, n in (("num_classes", num_classes), ("num_biases", num_biases)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be an int >= 1, got {n!r}")
    if bias is None:
        raise ValueError("bias is None: this method needs bias labels (TensorData.bias)")
    y, bias = torch.as_tensor(y).cpu().long(), torch.as_tensor(bias).cpu().long()
    if len(y) != len(bias):
        raise ValueError(f"y has {len(y)} labels but bias has {len(bias)}")
    for name, t, n in (("y", y, num_classes), ("bias", bias, num_biases)):
        if len(t) and (t.min() < 0 or t.max() >= n):
            raise ValueError(f"{name} must lie in [0, {n}), got values in [{t.min()}, {t.max()}]")
    return torch.bincount(y * num_biases + bias, minlength=num_classes * num_biases)


def weighted_ce(logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """mean_i w_i · CE_i: the loss of LfF's debiased network and of group re-weighting."""
    return (F.cross_entropy(logits, y, reduction="none") * weights).mean()


def _optimisers(optimizers: Optimisers) -> list[torch.optim.Optimizer]:
    opts = [optimizers] if isinstance(optimizers, torch.optim.Optimizer) else list(optimizers)
    if not opts:
        raise ValueError("optimizers must name at least one optimiser")
    return opts


def _descend(loss: torch.Tensor, opts: Sequence[torch.optim.Optimizer]) -> None:
    for opt in opts:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    for opt in opts:
        opt.step()


# ----------------------------------------------------------------------- re-weighting / re-sampling
def group_weights(groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """Per-sample weight w_g ∝ 1/n_g of its group, scaled so that Σ_g w_g = num_groups over all
    groups (empty groups weigh 0): SubpopBench's ReWeight. Also the sampling weights of
    :func:`group_balanced`, which only their ratios matter to."""
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    groups = torch.as_tensor(groups).long()
    if len(groups) == 0:
        raise ValueError("groups is empty")
    g_cpu = groups.cpu()
    if g_cpu.min() < 0 or g_cpu.max() >= num_groups:
        raise ValueError(
            f"groups must lie in [0, num_groups={num_groups}), got [{g_cpu.min()}, {g_cpu.max()}]"
        )
    counts = torch.bincount(g_cpu, minlength=num_groups).double()
    inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), 0.0)
    per_group = (inv / inv.sum() * num_groups).float()
    return per_group[g_cpu].to(groups.device)


def group_balanced(groups: torch.Tensor, num_groups: int) -> EpochSampler:
    """ReSample: epochs of n rows drawn with replacement, every non-empty group equally likely (the
    group analogue of :func:`helpers.train.class_balanced`)."""
    return weighted(group_weights(groups, num_groups))


def reweighted_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, weights: torch.Tensor
) -> StepFn:
    """ReWeight: one optimiser step on mean_i w_i · CE_i, with ``weights`` over the training rows
    (:func:`group_weights`), looked up by the batch's row indices."""
    if weights.dim() != 1:
        raise ValueError(f"weights must be one weight per training row, got shape {weights.shape}")
    table = {"w": weights.detach().float()}

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        if table["w"].device != batch.idx.device:  # moved once, on the first step
            table["w"] = table["w"].to(batch.idx.device)
        logits = model(batch.x)
        loss = weighted_ce(logits, batch.y, table["w"][batch.idx])
        _descend(loss, [optimizer])
        return {"loss": loss.detach(), "acc": (logits.argmax(1) == batch.y).float().mean()}

    return step


# ---------------------------------------------------------------------------------------------- JTT
@torch.no_grad()
def jtt_error_set(model: nn.Module, train: TensorData) -> torch.Tensor:
    """Boolean mask (CPU) of the training samples the identification model misclassifies."""
    return (predict(model, train).argmax(1) != train.y).cpu()


def jtt_weights(wrong: torch.Tensor, upweight: float) -> torch.Tensor:
    """Weight ``upweight`` (the paper's λ_up) for the error set, 1 for the rest.

    The paper's stage-2 objective is λ_up · Σ_{i∈E} ℓ_i + Σ_{i∉E} ℓ_i. Its code (``run_expt.py``)
    appends ``--up_weight k`` extra copies of E to the training set, so an error sample counts
    k + 1 times: ``upweight = k + 1`` reproduces a run of the code with ``--up_weight k``.
    """
    if isinstance(upweight, bool) or not isinstance(upweight, (int, float)) or not upweight >= 1:
        raise ValueError(f"upweight must be a number >= 1, got {upweight!r}")
    return torch.where(wrong.bool(), torch.tensor(float(upweight)), torch.tensor(1.0))


def upsampled(multiplicity: torch.Tensor) -> EpochSampler:
    """Sampler over the up-sampled training set in which row i appears ``multiplicity[i]`` times
    (JTT's concatenated copies), drawn without replacement.

    :func:`helpers.train.fit` asks for n = len(train) rows per epoch, fewer than the up-sampled set
    holds: the sampler hands out consecutive n-row slices of a stream of random permutations of the
    up-sampled set, so every (Σ multiplicity) rows drawn make one pass of the paper's epoch. The
    stream restarts when ``fit`` passes a new generator (a new ``fit`` call), so a run depends only
    on its seed.
    """
    mult = torch.as_tensor(multiplicity).cpu()
    if mult.dim() != 1 or len(mult) == 0:
        raise ValueError(f"multiplicity must be a non-empty 1-d tensor, got shape {mult.shape}")
    if mult.is_floating_point() and not torch.equal(mult, mult.round()):
        raise ValueError("multiplicity must hold whole numbers (copies of each row)")
    mult = mult.long()
    if mult.min() < 0 or mult.sum() == 0:
        raise ValueError("multiplicity must be >= 0 with at least one row kept")
    pool = torch.repeat_interleave(torch.arange(len(mult)), mult)
    state: dict = {"gen": None, "left": pool[:0]}

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        if gen is not state["gen"]:
            state["gen"], state["left"] = gen, pool[:0]
        parts, need = [], n
        while need > 0:
            if len(state["left"]) == 0:
                state["left"] = pool[torch.randperm(len(pool), generator=gen)]
            take = state["left"][:need]
            state["left"] = state["left"][need:]
            parts.append(take)
            need -= len(take)
        return torch.cat(parts)

    return sample


def jtt_upsampler(wrong: torch.Tensor, upweight: int) -> EpochSampler:
    """JTT's stage-2 sampler: the error set up-sampled to ``upweight`` copies per sample
    (:func:`jtt_weights`, :func:`upsampled`)."""
    if isinstance(upweight, float) and not upweight.is_integer():
        raise ValueError(f"upweight must be a whole number of copies, got {upweight!r}")
    return upsampled(jtt_weights(wrong, upweight).round().long())


def jtt_auto_upweight(wrong: torch.Tensor) -> int:
    """The code's ``--up_weight -1``: floor(|¬E| / |E|) − 1 extra copies, i.e. ``upweight`` =
    floor(|¬E| / |E|), so E and ¬E weigh about the same."""
    n_wrong = int(wrong.sum())
    if n_wrong == 0:
        raise ValueError("wrong is empty: the identification model made no error")
    return max(1, (len(wrong) - n_wrong) // n_wrong)


# ---------------------------------------------------------------------------------------------- LfF
def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised CE as LfF's code writes it: ``CE * q * stopgrad(p_y)^q`` (per sample).

    Its gradient is q · p_y^q · ∇CE, i.e. q times the gradient of (1 − p_y^q) / q.
    """
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1).detach()
    return F.cross_entropy(logits, y, reduction="none") * (p**q) * q


def lff_weights(loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
    """Relative difficulty ``W = l_B / (l_B + l_D)`` in [0, 1] (0 where both losses are 0; the
    official code adds 1e-8 to the denominator instead)."""
    total = loss_b + loss_d
    return torch.where(total > 0, loss_b / total.clamp_min(1e-12), torch.zeros_like(total))


class LossEMA:
    """Per-sample exponential moving average of a loss, read normalised by the maximum over the
    sample's class (LfF's ``EMA`` and class-wise ``max_loss``).

    The first visit of a sample stores its loss itself; later visits do ``e <- alpha * e + (1 -
    alpha) * loss``. The values live in a (class × rank-in-class) table padded with zeros, so the
    class maxima are one row-wise max per step.
    """

    def __init__(self, y: torch.Tensor, alpha: float, num_classes: int | None = None):
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha < 1:
            raise ValueError(f"alpha must be in [0, 1), got {alpha!r}")
        y_cpu = torch.as_tensor(y).cpu().long()
        if y_cpu.dim() != 1 or len(y_cpu) == 0:
            raise ValueError(f"y must be a non-empty 1-d label tensor, got shape {y_cpu.shape}")
        c = int(y_cpu.max()) + 1 if num_classes is None else num_classes
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
        if y_cpu.min() < 0 or y_cpu.max() >= c:
            raise ValueError(f"y must lie in [0, {c}), got [{y_cpu.min()}, {y_cpu.max()}]")
        counts = torch.bincount(y_cpu, minlength=c)
        order = torch.argsort(y_cpu, stable=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.empty_like(y_cpu)
        rank[order] = torch.arange(len(y_cpu)) - starts[y_cpu[order]]
        device = torch.as_tensor(y).device
        self.alpha = alpha
        self.row, self.col = y_cpu.to(device), rank.to(device)
        self.table = torch.zeros(c, max(int(counts.max()), 1), device=device)
        self.seen = torch.zeros(len(y_cpu), dtype=torch.bool, device=device)

    @property
    def values(self) -> torch.Tensor:
        """The current (unnormalised) EMA of every training sample, in row order."""
        return self.table[self.row, self.col]

    def update(self, idx: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Fold the batch's losses into the EMAs of rows ``idx``; return those EMAs divided by
        their class maxima (over the whole training set)."""
        r, c = self.row[idx], self.col[idx]
        keep = torch.where(self.seen[idx], self.alpha, 0.0)  # 0 on a first visit: e = loss
        self.table[r, c] = keep * self.table[r, c] + (1 - keep) * loss.float()
        self.seen[idx] = True
        out = self.table[r, c]
        # values are >= 0, so the zero padding never raises a class maximum
        top = self.table.amax(1).clamp_min(1e-8)
        return out / top[r]


def lff_step(
    debiased: nn.Module,
    biased: nn.Module,
    optimizers: Optimisers,
    ema_d: LossEMA,
    ema_b: LossEMA,
    q: float = 0.7,
) -> StepFn:
    """One LfF iteration (official ``train.py``): per-sample CEs of both networks → EMAs → class
    normalisation → W; loss = mean GCE(biased) + mean W · CE(debiased); one backward, then every
    optimiser steps (both networks are updated each step). W is computed without a gradient."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    opts = _optimisers(optimizers)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        logits_b, logits_d = biased(batch.x), debiased(batch.x)
        ce_b = F.cross_entropy(logits_b, batch.y, reduction="none").detach()
        ce_d = F.cross_entropy(logits_d, batch.y, reduction="none").detach()
        w = lff_weights(ema_b.update(batch.idx, ce_b), ema_d.update(batch.idx, ce_d))
        loss = gce_loss(logits_b, batch.y, q).mean() + weighted_ce(logits_d, batch.y, w)
        _descend(loss, opts)
        return {"loss": loss.detach(), "mean_weight": w.mean()}

    return step


# ----------------------------------------------------------------------------------------- GroupDRO
class GroupDRO:
    """GroupDRO's online group weights (``loss.py::LossComputer`` of the official code).

    Per batch: ℓ_g = mean loss of the batch's samples of group g (0 if absent);
    q ← q · exp(η · (ℓ_g + C / √n_g)), renormalised; loss = Σ_g q_g ℓ_g. q starts uniform and is
    updated with detached losses, before the loss is formed (as the official code).
    """

    def __init__(
        self,
        num_groups: int,
        eta: float = 0.01,
        *,
        adjustment: float = 0.0,
        group_counts: torch.Tensor | None = None,
        device=None,
    ):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
        if not eta > 0:
            raise ValueError(f"eta must be > 0, got {eta}")
        if adjustment < 0:
            raise ValueError(f"adjustment must be >= 0, got {adjustment}")
        self.num_groups, self.eta = num_groups, eta
        self.q = torch.full((num_groups,), 1.0 / num_groups, device=device)
        self.groups = torch.arange(num_groups, device=device)
        self.adjust = None
        if adjustment > 0:
            if group_counts is None or len(group_counts) != num_groups:
                raise ValueError("adjustment > 0 needs group_counts, one training count per group")
            n = torch.as_tensor(group_counts, dtype=torch.float32).clamp_min(1)
            self.adjust = (adjustment / n.sqrt()).to(device)

    def group_losses(self, per_sample: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Mean of ``per_sample`` over each group's samples in the batch (0 for absent groups)."""
        if self.groups.device != groups.device:  # moved once, on the first step
            self.groups, self.q = self.groups.to(groups.device), self.q.to(groups.device)
            if self.adjust is not None:
                self.adjust = self.adjust.to(groups.device)
        # group sums through a one-hot mask, not bincount / index_add: on CUDA bincount reads its
        # input's max back to the host every step and index_add accumulates in a nondeterministic
        # order; a masked sum is deterministic and stays float32 under autocast (a matmul would not)
        onehot = (groups[:, None] == self.groups).to(per_sample.dtype)
        return (onehot * per_sample[:, None]).sum(0) / onehot.sum(0).clamp_min(1)

    def __call__(self, per_sample: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """Update q from this batch and return the robust loss Σ_g q_g ℓ_g."""
        group_loss = self.group_losses(per_sample, groups)
        step = group_loss.detach() if self.adjust is None else group_loss.detach() + self.adjust
        q = self.q * torch.exp(self.eta * step)
        self.q = q / q.sum()
        return (self.q * group_loss).sum()


def groupdro_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, dro: GroupDRO, num_biases: int
) -> StepFn:
    """GroupDRO with the training set's bias labels: groups (y, b), loss ``dro(CE_i, g_i)``."""
    if isinstance(num_biases, bool) or not isinstance(num_biases, int) or num_biases < 1:
        raise ValueError(f"num_biases must be an int >= 1, got {num_biases!r}")
    if dro.num_groups % num_biases:
        raise ValueError(
            f"num_biases={num_biases} does not divide the {dro.num_groups} groups of dro"
        )

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        g = group_ids(batch.y, batch.bias, num_biases)
        per = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        loss = dro(per, g)
        _descend(loss, [optimizer])
        return {"loss": loss.detach(), "q_min": dro.q.min()}

    return step


# ------------------------------------------------------------------------------ one call per method
METHODS = ("erm", "lff", "jtt", "groupdro", "reweight", "resample")
NEEDS_TRAIN_BIAS = ("groupdro", "reweight", "resample")


@dataclass
class MethodSetup:
    """What ``fit`` needs to train one method: the step, the networks (``"model"`` is the one that
    is evaluated and selected), the optimisers a schedule steps, and the epoch sampler."""

    method: str
    step: StepFn
    modules: dict[str, nn.Module]
    optimisers: list[torch.optim.Optimizer]
    sampler: EpochSampler = shuffled
    state: dict = field(default_factory=dict)  # LfF's EMAs, GroupDRO's q


def build(
    method: str,
    make_model: Callable[[], nn.Module],
    train: TensorData,
    *,
    lr: float,
    weight_decay: float = 0.0,
    num_classes: int,
    num_biases: int | None = None,
    q: float = 0.7,
    ema_alpha: float = 0.7,
    eta: float = 0.01,
    error_set: torch.Tensor | None = None,
    upweight: int | None = None,
) -> MethodSetup:
    """Networks (from ``make_model``, on ``train``'s device), Adam optimisers, step and sampler of
    ``method`` (one of :data:`METHODS`); call after seeding (LfF builds the debiased network first).

    ``"jtt"`` is JTT's stage 2: pass the stage-1 ``error_set`` (:func:`jtt_error_set`) and
    ``upweight`` (λ_up). GroupDRO, ReWeight and ReSample read ``train.bias`` (``num_biases``
    colours or attribute values).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if method in NEEDS_TRAIN_BIAS:
        if num_biases is None:
            raise ValueError(f"num_biases is required for {method!r} (groups are (label, bias))")
        counts = group_counts(train.y, train.bias, num_classes, num_biases)
    if method == "jtt" and (error_set is None or upweight is None):
        raise ValueError("'jtt' needs error_set (from stage 1) and upweight")
    device = train.device

    def adam(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)

    model = make_model().to(device)
    opt = adam(model)
    modules = {"model": model}
    if method == "lff":
        modules["biased"] = biased = make_model().to(device)
        opt_b = adam(biased)
        ema_d = LossEMA(train.y, ema_alpha, num_classes)
        ema_b = LossEMA(train.y, ema_alpha, num_classes)
        step = lff_step(model, biased, [opt, opt_b], ema_d, ema_b, q=q)
        return MethodSetup(
            method, step, modules, [opt, opt_b], state={"ema_d": ema_d, "ema_b": ema_b}
        )
    if method == "groupdro":
        dro = GroupDRO(len(counts), eta, device=device)
        step = groupdro_step(model, opt, dro, num_biases)
        return MethodSetup(method, step, modules, [opt], state={"dro": dro})
    if method in ("reweight", "resample"):
        groups = group_ids(train.y, train.bias, num_biases)
        if method == "reweight":
            step = reweighted_step(model, opt, group_weights(groups, len(counts)))
            return MethodSetup(method, step, modules, [opt])
        sampler = group_balanced(groups, len(counts))
        return MethodSetup(method, supervised_step(model, opt), modules, [opt], sampler)
    sampler = shuffled if method == "erm" else jtt_upsampler(error_set, upweight)
    return MethodSetup(method, supervised_step(model, opt), modules, [opt], sampler)


__all__ = [
    "METHODS",
    "GroupDRO",
    "LossEMA",
    "MethodSetup",
    "build",
    "gce_loss",
    "group_balanced",
    "group_counts",
    "group_ids",
    "group_weights",
    "groupdro_step",
    "jtt_auto_upweight",
    "jtt_error_set",
    "jtt_upsampler",
    "jtt_weights",
    "lff_step",
    "lff_weights",
    "reweighted_step",
    "upsampled",
    "weighted_ce",
]
