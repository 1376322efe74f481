"""Group-robustness baselines as small heads on frozen features: ERM, JTT, LfF, GroupDRO, DFR.

All neural heads are :class:`helpers.caml.Adapter` (D → 128 tanh → 2) trained by
:func:`helpers.train.fit` with Adam; the methods differ only in the step function or the sampler.
Selection: worst-group accuracy on the group-balanced validation split for JTT, GroupDRO (as in
their papers); plain validation accuracy for ERM and LfF (LfF's official code keeps the last epoch;
here it gets the same validation-based selection as the other methods). DFR is a logistic
regression on the validation features.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from helpers import metrics as M
from helpers.models import Adapter
from helpers.seed import derive_seed
from helpers.tensordata import TensorData
from helpers.train import (
    Batch,
    KeepBest,
    TrainConfig,
    TrainResult,
    accuracy_on,
    fit,
    fit_keep_best,
    predict,
    supervised_step,
    weighted,
)

GROUP_NAMES = ["y0/b0", "y0/b1", "y1/b0", "y1/b1"]


# ------------------------------------------------------------------------------------------ metrics
def group_metrics(y, bias, pred, train_counts) -> dict:
    """Worst-group, mean-of-groups (the CAML code's "average"), plain and training-group-weighted
    accuracy.

    ``train_counts`` are the training-set counts of the four groups g = 2*y + bias (a list of 4).
    """
    y, bias, pred = (np.asarray(torch.as_tensor(v).cpu()) for v in (y, bias, pred))
    table = M.group_accuracy(y, bias, pred, 2, 2)
    counts = np.asarray(train_counts, dtype=float).reshape(2, 2)
    return {
        "worst": M.worst_group_accuracy(table),
        "mean_of_groups": M.mean_of_groups_accuracy(table),
        "plain": M.accuracy(y, pred),
        "weighted": M.weighted_accuracy(table, counts),
        "group_acc": table.tolist(),
    }


def worst_group_on(model, data: TensorData) -> float:
    pred = predict(model, data).argmax(1)
    return M.worst_group_accuracy(M.group_accuracy(data.y.cpu(), data.bias.cpu(), pred.cpu(), 2, 2))


# ---------------------------------------------------------------------------------------------- ERM
def train_erm(
    model: Adapter,
    train: TensorData,
    val: TensorData,
    cfg: TrainConfig,
    *,
    select: str = "plain",
    desc: str = "ERM",
) -> TrainResult:
    """Plain ERM (shuffled batches); keep the epoch with the best ``select`` ("plain" or "worst")
    val accuracy."""
    if select not in ("plain", "worst"):
        raise ValueError(f"select must be 'plain' or 'worst', got {select!r}")
    opt = cfg.adam(model.parameters())
    score = accuracy_on if select == "plain" else worst_group_on
    result = fit_keep_best(
        model,
        train,
        supervised_step(model, opt),
        cfg,
        "val_score",
        lambda: score(model, val),
        desc=desc,
    )
    return result


# ---------------------------------------------------------------------------------------------- JTT
def jtt_weights(wrong: torch.Tensor, upweight: float) -> torch.Tensor:
    """Sampling weight ``upweight`` for the error set, 1 for the rest (JTT's up-sampling as a
    sampler)."""
    if upweight < 1:
        raise ValueError(f"upweight must be >= 1, got {upweight}")
    return torch.where(wrong.bool(), torch.tensor(float(upweight)), torch.tensor(1.0))


def jtt_error_set(model, train: TensorData) -> torch.Tensor:
    """Boolean mask of the training samples the identification model misclassifies."""
    return (predict(model, train).argmax(1) != train.y).cpu()


def train_jtt(
    model: Adapter,
    train: TensorData,
    val: TensorData,
    cfg: TrainConfig,
    *,
    id_epochs: int,
    upweight: float,
    desc: str = "JTT",
) -> TrainResult:
    """JTT: ERM for ``id_epochs`` → error set → fresh head trained with the error set up-sampled
    ``upweight``×."""
    if int(id_epochs) < 1:
        raise ValueError(f"id_epochs must be >= 1, got {id_epochs}")
    ident = Adapter(train.x.shape[1]).to(train.device)
    opt = cfg.adam(ident.parameters())
    fit(
        train,
        supervised_step(ident, opt),
        epochs=id_epochs,
        batch_size=cfg.batch_size,
        modules=ident,
        seed=cfg.seed,
        desc=f"{desc} id",
    )
    wrong = jtt_error_set(ident, train)
    w = jtt_weights(wrong, upweight)
    opt = cfg.adam(model.parameters())
    result = fit_keep_best(
        model,
        train,
        supervised_step(model, opt),
        cfg,
        "val_worst",
        lambda: worst_group_on(model, val),
        seed=derive_seed(cfg.seed, "jtt", "upweighted"),
        sampler=weighted(w),
        desc=desc,
    )
    groups = torch.bincount((2 * train.y + train.bias).cpu()[wrong], minlength=4).tolist()
    result.extras.update(error_set_size=int(wrong.sum()), error_set_groups=groups)
    return result


# ---------------------------------------------------------------------------------------------- LfF
def gce_loss(logits: torch.Tensor, y: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised CE as LfF's code writes it: ``CE * q * stopgrad(p_y)^q`` (per sample)."""
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    p = F.softmax(logits, 1).gather(1, y[:, None]).squeeze(1).detach()
    return F.cross_entropy(logits, y, reduction="none") * (p**q) * q


def lff_weights(loss_b: torch.Tensor, loss_d: torch.Tensor) -> torch.Tensor:
    """Relative difficulty ``W = l_B / (l_B + l_D)`` in [0, 1] (0 where both losses are 0)."""
    total = loss_b + loss_d
    return torch.where(total > 0, loss_b / total.clamp_min(1e-12), torch.zeros_like(total))


class _EMA:
    """Per-sample exponential moving average of a loss, normalised by its class maximum (as LfF's
    code).

    The first visit of a sample stores its loss itself; later visits do ``e <- alpha * e + (1 -
    alpha) * loss``.
    """

    def __init__(self, y: torch.Tensor, alpha: float):
        self.y, self.alpha = y, alpha
        self.value = torch.zeros(len(y), device=y.device)
        self.seen = torch.zeros(len(y), dtype=torch.bool, device=y.device)
        self.class_masks = torch.stack([y == c for c in (0, 1)])  # (2, N), built once

    def update(self, idx: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        keep = torch.where(self.seen[idx], self.alpha, 0.0)  # 0 on a first visit: e = loss
        self.value[idx] = keep * self.value[idx] + (1 - keep) * loss.float()
        self.seen[idx] = True
        out = self.value[idx].clone()
        # per-class maxima over the whole set, on the device (values are >= 0, so 0 outside a class
        # is neutral)
        top = torch.where(self.class_masks, self.value, 0.0).amax(1).clamp_min(1e-8)
        yb = self.y[idx]
        return torch.where(yb == 0, out / top[0], torch.where(yb == 1, out / top[1], out))


def train_lff(
    model: Adapter,
    train: TensorData,
    val: TensorData,
    cfg: TrainConfig,
    *,
    q: float = 0.7,
    alpha: float = 0.7,
    desc: str = "LfF",
) -> TrainResult:
    """LfF: a GCE-trained biased head and the debiased ``model`` trained with relative-difficulty
    weights; ``model`` ends at the epoch of best plain validation accuracy."""
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    biased = Adapter(train.x.shape[1]).to(train.device)
    opt = cfg.adam(list(model.parameters()) + list(biased.parameters()))
    ema_b, ema_d = _EMA(train.y, alpha), _EMA(train.y, alpha)

    def step(batch: Batch) -> dict:
        lb_logits, ld_logits = biased(batch.x), model(batch.x)
        ce_b = F.cross_entropy(lb_logits, batch.y, reduction="none").detach()
        ce_d = F.cross_entropy(ld_logits, batch.y, reduction="none").detach()
        w = lff_weights(ema_b.update(batch.idx, ce_b), ema_d.update(batch.idx, ce_d))
        loss = (
            gce_loss(lb_logits, batch.y, q).mean()
            + (F.cross_entropy(ld_logits, batch.y, reduction="none") * w).mean()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss, "mean_weight": w.mean()}

    # the debiased head is selected like ERM and CAML, by plain accuracy on the (group-balanced)
    # validation set; the worst groups are logged, never used
    keep = KeepBest(model, "val_acc")
    h = fit(
        train,
        step,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        modules=[model, biased],
        seed=cfg.seed,
        desc=desc,
        evaluate=lambda: {
            "val_acc": accuracy_on(model, val),
            "val_worst": worst_group_on(model, val),
            "biased_val_worst": worst_group_on(biased, val),
        },
        callbacks=[keep],
    )
    return TrainResult(h, keep.restore(), {"biased": biased})


# ----------------------------------------------------------------------------------------- GroupDRO
def train_groupdro(
    model: Adapter,
    train: TensorData,
    val: TensorData,
    cfg: TrainConfig,
    *,
    eta: float = 0.01,
    desc: str = "GroupDRO",
) -> TrainResult:
    """GroupDRO with training group labels (oracle): loss ``sum_g q_g l_g``, ``q ← q exp(eta l_g)``,
    normalised."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    opt = cfg.adam(model.parameters())
    q = torch.full((4,), 0.25, device=train.device)

    def step(batch: Batch) -> dict:
        nonlocal q
        g = 2 * batch.y + batch.bias
        per = F.cross_entropy(model(batch.x), batch.y, reduction="none")
        # group sums through a one-hot mask, not bincount / index_add: on CUDA bincount reads its
        # input's max back to the host every step and index_add accumulates in a nondeterministic
        # order; a masked sum is deterministic and stays float32 under autocast (a matmul would not)
        onehot = (g[:, None] == torch.arange(4, device=g.device)).to(per.dtype)
        group_loss = (onehot * per[:, None]).sum(0) / onehot.sum(0).clamp_min(1)
        q = q * torch.exp(eta * group_loss.detach())
        q = q / q.sum()
        loss = (q * group_loss).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {"loss": loss, "q_min": q.min()}

    result = fit_keep_best(
        model,
        train,
        step,
        cfg,
        "val_worst",
        lambda: worst_group_on(model, val),
        desc=desc,
    )
    result.extras["q"] = q.cpu().tolist()
    return result


# ---------------------------------------------------------------------------------------------- DFR
def train_dfr(val: TensorData, seed: int, cs=(0.1, 0.3, 1.0, 3.0, 10.0)):
    """DFR^Val: L1 logistic regression on standardised (group-balanced) val features; C tuned on a
    val half.

    The val split is halved (seeded); each C is fitted on one half and scored by worst-group
    accuracy on the other; the chosen C is refitted on all of val. Returns a callable
    ``predict(feats) -> labels`` and the chosen C.

    Simplifications of DFR's script: the feature folder's val split is already group-balanced, so
    DFR's 20 refits on group-balanced subsamples of val would all see the same samples and are
    replaced by one fit on all of val; the scaler is fitted on val (DFR's final fit uses the
    training features); the C grid is this function's ``cs``. The seed only changes the half-split
    used to choose C, so different seeds often give the very same classifier.
    """
    import sklearn
    from sklearn.linear_model import LogisticRegression

    new_api = tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (
        1,
        8,
    )  # `penalty` deprecated in 1.8

    def logreg(c):  # L1 with liblinear, as DFR's code
        l1 = {"l1_ratio": 1.0} if new_api else {"penalty": "l1"}
        return LogisticRegression(C=c, solver="liblinear", max_iter=1000, **l1)

    x = val.x.detach().cpu().numpy()
    y, b = val.y.cpu().numpy(), val.bias.cpu().numpy()
    mu, sd = x.mean(0), x.std(0) + 1e-8
    xs = (x - mu) / sd
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    a, t = perm[: len(y) // 2], perm[len(y) // 2 :]
    best_c, best = None, -1.0
    for c in cs:
        clf = logreg(c).fit(xs[a], y[a])
        wg = M.worst_group_accuracy(M.group_accuracy(y[t], b[t], clf.predict(xs[t]), 2, 2))
        if wg > best:
            best_c, best = c, wg
    clf = logreg(best_c).fit(xs, y)

    def predict_fn(feats: torch.Tensor) -> np.ndarray:
        return clf.predict((feats.detach().cpu().numpy() - mu) / sd)

    return predict_fn, best_c


__all__ = [
    "GROUP_NAMES",
    "group_metrics",
    "train_erm",
    "jtt_weights",
    "jtt_error_set",
    "train_jtt",
    "gce_loss",
    "lff_weights",
    "train_lff",
    "train_groupdro",
    "train_dfr",
]
