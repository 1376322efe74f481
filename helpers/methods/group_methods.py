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
