"""Model selection from validation metrics only: which trial (hyper-parameters, epoch) to report.

A *trial* is one trained candidate, e.g. ``("jtt", T, λ_up, epoch)``; its record is a mapping of
validation metrics, every name starting with ``val_``. The selection functions take nothing else,
so they cannot read a test set: a metric of another split is refused by name.

Two information regimes, as SubpopBench's ``model_selection.py`` names them:

=======================  =====================  ===============================================
rule                     metric                 what the practitioner has
=======================  =====================  ===============================================
``val_acc``              ``val_acc``            no bias labels: plain accuracy on a validation
                                                set drawn like the training set (as biased)
``val_worst_class``      ``val_worst_class``    no bias labels: the lowest per-class accuracy
                                                (SubpopBench's "worst accuracy without
                                                attributes")
``val_worst_group``      ``val_worst_group``    bias labels on validation only: the lowest
                                                (label, bias) group accuracy
=======================  =====================  ===============================================
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from helpers import metrics as M
from helpers.tensordata import TensorData
from helpers.train import History, predict


@dataclass(frozen=True)
class Rule:
    """One selection rule: maximise ``metric``; ``needs_bias`` says whether it reads bias labels."""

    name: str
    metric: str
    needs_bias: bool
    description: str


RULES = {
    r.name: r
    for r in (
        Rule("val_acc", "val_acc", False, "plain accuracy on a biased validation set"),
        Rule("val_worst_class", "val_worst_class", False, "worst-class validation accuracy"),
        Rule("val_worst_group", "val_worst_group", True, "worst-group validation accuracy"),
    )
}
NO_BIAS_LABELS = ("val_acc", "val_worst_class")  # rule (a): no bias labels anywhere
VAL_BIAS_LABELS = ("val_worst_group",)  # rule (b): bias labels on validation only


def worst_class_accuracy(y, pred, num_classes: int) -> float:
    """min_c accuracy on the samples of class c (classes absent from ``y`` ignored)."""
    cm = M.confusion_matrix(y, pred, num_classes, normalize=True)
    return float(np.nanmin(np.diag(cm)))


def validation_metrics(
    y, pred, *, num_classes: int, bias=None, num_biases: int | None = None
) -> dict[str, float]:
    """The metrics every rule reads, from one validation split's labels and predictions:
    ``val_acc``, ``val_worst_class`` and, given ``bias`` and ``num_biases``, ``val_worst_group`` and
    ``val_mean_of_groups`` (:mod:`helpers.metrics` definitions; empty groups ignored)."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    out = {
        "val_acc": M.accuracy(y, pred),
        "val_worst_class": worst_class_accuracy(y, pred, num_classes),
    }
    if (bias is None) != (num_biases is None):
        raise ValueError("bias and num_biases go together: pass both or neither")
    if bias is not None:
        table = M.group_accuracy(y, bias, pred, num_classes, num_biases)
        out["val_worst_group"] = M.worst_group_accuracy(table)
        out["val_mean_of_groups"] = M.mean_of_groups_accuracy(table)
    return out


def evaluate_validation(
    model: nn.Module, val: TensorData, *, num_classes: int, num_biases: int | None = None
) -> dict[str, float]:
    """:func:`validation_metrics` of ``model`` on ``val`` (group metrics only with ``num_biases``:
    leave it out in the regime without bias labels)."""
    pred = predict(model, val).argmax(1).cpu()
    bias = None if num_biases is None else val.bias
    if num_biases is not None and bias is None:
        raise ValueError("num_biases given but val has no bias labels (val.bias is None)")
    return validation_metrics(
        val.y.cpu(),
        pred,
        num_classes=num_classes,
        bias=None if bias is None else bias.cpu(),
        num_biases=num_biases,
    )


def _check_trials(trials: Mapping[Hashable, Mapping[str, float]]) -> None:
    if not trials:
        raise ValueError("trials is empty: nothing to select from")
    for trial, record in trials.items():
        foreign = [k for k in record if not str(k).startswith("val_")]
        if foreign:
            raise ValueError(
                f"trial {trial!r} carries non-validation metrics {foreign}: selection reads "
                "validation metrics (names starting with 'val_') only"
            )


def select(trials: Mapping[Hashable, Mapping[str, float]], rule: str) -> Hashable:
    """The trial with the highest value of ``rule``'s metric; ties go to the trial listed first,
    NaN never wins."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {list(RULES)}, got {rule!r}")
    _check_trials(trials)
    metric = RULES[rule].metric
    best, best_value = None, -np.inf
    for trial, record in trials.items():
        if metric not in record:
            raise ValueError(f"trial {trial!r} has no {metric!r}, which rule {rule!r} needs")
        value = float(record[metric])
        if value > best_value:
            best, best_value = trial, value
    if best is None:
        raise ValueError(f"every trial's {metric!r} is NaN or -inf")
    return best


def select_all(
    trials: Mapping[Hashable, Mapping[str, float]], rules: Iterable[str] | None = None
) -> dict[str, Hashable]:
    """The chosen trial of each rule (default: every rule whose metric all trials carry)."""
    _check_trials(trials)
    if rules is None:
        rules = [r for r, v in RULES.items() if all(v.metric in rec for rec in trials.values())]
    return {r: select(trials, r) for r in rules}


def trials_from_history(name: Hashable, history: History) -> dict[tuple, dict[str, float]]:
    """One trial per epoch of a run's history, ``(name, epoch) -> its val_* metrics``: epoch
    selection and hyper-parameter selection in one call to :func:`select`."""
    return {
        (name, int(row["epoch"])): {k: v for k, v in row.items() if str(k).startswith("val_")}
        for row in history.rows
    }


__all__ = [
    "NO_BIAS_LABELS",
    "RULES",
    "VAL_BIAS_LABELS",
    "Rule",
    "evaluate_validation",
    "select",
    "select_all",
    "trials_from_history",
    "validation_metrics",
    "worst_class_accuracy",
]
