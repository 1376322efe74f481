"""Group-robustness baselines as small heads on frozen features: ERM, JTT, LfF, GroupDRO, DFR.

All neural heads are :class:`helpers.models.Adapter` (D → 128 tanh → 2) trained by
:func:`helpers.train.fit` with Adam; the methods differ only in the step function or the sampler,
which come from :mod:`helpers.methods.debias` (the same losses and rules train CNNs end to end).
Selection: worst-group accuracy on the group-balanced validation split for JTT, GroupDRO (as in
their papers); plain validation accuracy for ERM and LfF (LfF's official code keeps the last epoch;
here it gets the same validation-based selection as the other methods). DFR is a logistic
regression on the validation features.
"""

from __future__ import annotations

import numpy as np
import torch

from helpers import metrics as M
from helpers.methods.debias import (
    GroupDRO,
    LossEMA,
    gce_loss,
    groupdro_step,
    jtt_error_set,
    jtt_weights,
    lff_step,
    lff_weights,
)
from helpers.models import Adapter
from helpers.seed import derive_seed
from helpers.tensordata import TensorData
from helpers.train import (
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
    """JTT: ERM for ``id_epochs`` → error set → fresh head trained with the error set drawn
    ``upweight``× as often (a weighted sampler with replacement; the end-to-end version up-samples
    without replacement, :func:`~helpers.methods.debias.jtt_upsampler`)."""
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
    weights (:func:`~helpers.methods.debias.lff_step`); ``model`` ends at the epoch of best plain
    validation accuracy."""
    if not 0 <= alpha < 1:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    biased = Adapter(train.x.shape[1]).to(train.device)
    # one Adam over both heads: the same update as two (Adam's state is per parameter)
    opt = cfg.adam(list(model.parameters()) + list(biased.parameters()))
    ema_b, ema_d = LossEMA(train.y, alpha, 2), LossEMA(train.y, alpha, 2)
    step = lff_step(model, biased, opt, ema_d, ema_b, q=q)

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
    normalised (:class:`~helpers.methods.debias.GroupDRO` over the four groups g = 2y + b)."""
    if eta <= 0:
        raise ValueError(f"eta must be > 0, got {eta}")
    opt = cfg.adam(model.parameters())
    dro = GroupDRO(4, eta, device=train.device)
    result = fit_keep_best(
        model,
        train,
        groupdro_step(model, opt, dro, num_biases=2),
        cfg,
        "val_worst",
        lambda: worst_group_on(model, val),
        desc=desc,
    )
    result.extras["q"] = dro.q.cpu().tolist()
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


# ---------------------------------------------------------------------------------- equal tuning
TUNING_TRIALS = 9  # every tuned method gets this many validation trials (CAML's 3 × 3 grid)
SELECTION_RULE = {  # the validation score each method is tuned (and its epochs selected) on
    "CAML": "plain",
    "LfF": "plain",
    "JTT": "worst",
    "GroupDRO (oracle)": "worst",
}
LFF_QS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def _around(pinned: float, factor: float, n: int, low: float = 0.0, high: float = float("inf")):
    """``n`` distinct values pinned × factor^e (e = 0, −1, 1, −2, 2, …) within [low, high], sorted:
    centred on ``pinned`` (always one of them); at a bound the grid extends to the other side."""
    out: list[float] = []
    for step in range(4 * n):
        e = (step + 1) // 2 * (-1 if step % 2 else 1)
        # rounded to 12 digits: 0.01, not 0.010000000000000002 (the values key the cache)
        v = float(f"{min(max(pinned * factor**e, low), high):.12g}")
        if v not in out:
            out.append(v)
        if len(out) == n:
            return sorted(out)
    raise ValueError(f"cannot place {n} values around {pinned} in [{low}, {high}]")


def _three(pinned: float, factor: float, low: float = 0.0, high: float = float("inf")) -> list:
    return _around(pinned, factor, 3, low, high)


def tuning_grids(params) -> dict[str, list[dict]]:
    """The validation grid of every tuned method, :data:`TUNING_TRIALS` trials each, each grid
    around the chapter's pinned values (which are always a trial): CAML's stage-1 weight decay
    (÷10, ×1, ×10) × margin noise σ (÷2, ×1, ×2); JTT's identification epochs T (÷2, ×1, ×2) ×
    up-weight λ_up (÷4, ×1, ×4); GroupDRO's step size η (×2^-4 … ×2^4); LfF's GCE exponent q
    (0.1 … 0.9, the pinned q replacing its nearest value)."""
    wd1, sg = params["stage1_weight_decay"], params["sigma"]
    t, up = params["jtt_id_epochs"], params["jtt_upweight"]
    eta, q = params["dro_eta"], params["lff_q"]
    ts = [t // 2, t, 2 * t] if t >= 2 else [t, 2 * t, 4 * t]
    qs = list(LFF_QS)
    if q not in qs:
        qs[min(range(len(qs)), key=lambda i: abs(qs[i] - q))] = q
    return {
        "CAML": [
            {"stage1_weight_decay": w, "sigma": s}
            for w in _three(wd1, 10.0, high=10.0)
            for s in _three(sg, 2.0, high=2.0)
        ],
        "JTT": [
            {"jtt_id_epochs": int(a), "jtt_upweight": u}
            for a in ts
            for u in _three(up, 4.0, low=1.0, high=1000.0)
        ],
        "GroupDRO (oracle)": [
            {"dro_eta": v} for v in _around(eta, 2.0, TUNING_TRIALS, low=1e-4, high=10.0)
        ],
        "LfF": [{"lff_q": v} for v in sorted(qs)],
    }


def validation_score(model, val: TensorData, rule: str) -> float:
    """The chapter's rule: plain accuracy on the balanced validation set, or its worst group."""
    if rule not in ("plain", "worst"):
        raise ValueError(f"rule must be 'plain' or 'worst', got {rule!r}")
    return accuracy_on(model, val) if rule == "plain" else worst_group_on(model, val)


def pick_on_validation(trials: list[dict], scores: list[float], pinned: dict) -> dict:
    """The trial with the best validation score; on a tie the pinned trial, else the first."""
    if len(trials) != len(scores) or not trials:
        raise ValueError("one score per trial, at least one trial")
    best = max(scores)
    tied = [t for t, s in zip(trials, scores) if s == best]
    return pinned if pinned in tied else tied[0]
