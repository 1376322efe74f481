"""Accuracy metrics with their exact definitions: papers mean different things by "average
accuracy".

Notation: a test sample belongs to group g = (target y, bias attribute b); ``acc_g`` is the accuracy
on the test samples of group g, ``n_g`` their number; groups absent from the test set are ignored
(NaN in tables).

================================
=========================================================================== ``plain_accuracy``
fraction of all test samples classified correctly = Σ_g n_g·acc_g / Σ_g n_g ``worst_group_accuracy``
min_g acc_g ``mean_of_groups_accuracy``        (1/G) Σ_g acc_g over the G groups present
("unweighted group mean",
                                   CAML's "average", SubpopBench's "adjusted accuracy", the mean of
                                   LfF's 10×10 matrix)
``weighted_accuracy``              Σ_g w_g·acc_g with w_g = n_g^train / N^train (the Waterbirds
"mean accuracy"
                                   of DFR and JTT: test groups re-weighted to the training
                                   proportions)
``aligned_accuracy``               accuracy on bias-aligned samples (b equals the bias value tied to
y) ``conflicting_accuracy``           accuracy on bias-conflicting samples (all others)
================================
===========================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if torch.is_tensor(t) else np.asarray(t)


def accuracy(y, pred) -> float:
    """Plain accuracy: fraction of samples with ``pred == y``."""
    y, pred = _np(y), _np(pred)
    if len(y) == 0:
        raise ValueError("accuracy of an empty set is undefined")
    return float((y == pred).mean())


plain_accuracy = accuracy


def confusion_matrix(y, pred, num_classes: int, normalize: bool = False) -> np.ndarray:
    """``C[i, j]`` = number of samples of true class i predicted as j; rows sum to 1 if
    ``normalize``."""
    y, pred = _np(y).astype(int), _np(pred).astype(int)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y, pred), 1)
    if not normalize:
        return cm
    rows = cm.sum(1, keepdims=True)
    return np.divide(cm, rows, out=np.full(cm.shape, np.nan), where=rows > 0)


def group_counts(y, bias, num_targets: int, num_biases: int) -> np.ndarray:
    """``n[t, b]`` = number of samples with target t and bias attribute b."""
    n = np.zeros((num_targets, num_biases), dtype=np.int64)
    np.add.at(n, (_np(y).astype(int), _np(bias).astype(int)), 1)
    return n


def group_accuracy(y, bias, pred, num_targets: int, num_biases: int) -> np.ndarray:
    """``A[t, b]`` = accuracy on samples with target t and bias b; NaN where the group is empty."""
    y, bias, pred = _np(y).astype(int), _np(bias).astype(int), _np(pred).astype(int)
    correct = np.zeros((num_targets, num_biases))
    np.add.at(correct, (y, bias), (y == pred).astype(float))
    n = group_counts(y, bias, num_targets, num_biases)
    return np.divide(correct, n, out=np.full(n.shape, np.nan), where=n > 0)


def group_accuracy_frame(table: np.ndarray, target_names=None, bias_names=None) -> pd.DataFrame:
    """Label a (target × bias) table for display."""
    t, b = table.shape
    return pd.DataFrame(
        table,
        index=pd.Index(target_names or range(t), name="target"),
        columns=pd.Index(bias_names or range(b), name="bias"),
    )


def worst_group_accuracy(table: np.ndarray) -> float:
    """min_g acc_g over the groups present (NaN entries ignored)."""
    return float(np.nanmin(table))


def mean_of_groups_accuracy(table: np.ndarray) -> float:
    """(1/G) Σ_g acc_g over the G groups present: every group counts equally, whatever its size."""
    return float(np.nanmean(table))


def weighted_accuracy(table: np.ndarray, train_counts: np.ndarray) -> float:
    """Σ_g (n_g^train / N^train) acc_g: test group accuracies weighted by training group
    proportions.

    Groups with training samples but no test samples make this undefined and raise an error.
    """
    w = np.asarray(train_counts, dtype=float)
    if w.shape != table.shape:
        raise ValueError(f"train_counts shape {w.shape} differs from the table's {table.shape}")
    if np.any((w > 0) & np.isnan(table)):
        raise ValueError("a group with training samples has no test samples")
    w = w / w.sum()
    return float(np.nansum(w * np.nan_to_num(table)))


def aligned_mask(y, bias, bias_of_target=None) -> np.ndarray:
    """True where a sample is bias-aligned: ``bias == bias_of_target[y]`` (identity mapping by
    default)."""
    y, bias = _np(y).astype(int), _np(bias).astype(int)
    expected = y if bias_of_target is None else np.asarray(bias_of_target)[y]
    return bias == expected


def aligned_accuracy(y, bias, pred, bias_of_target=None) -> float:
    """Accuracy on the bias-aligned samples (NaN if there are none)."""
    m = aligned_mask(y, bias, bias_of_target)
    return accuracy(_np(y)[m], _np(pred)[m]) if m.any() else float("nan")


def conflicting_accuracy(y, bias, pred, bias_of_target=None) -> float:
    """Accuracy on the bias-conflicting samples (NaN if there are none)."""
    m = ~aligned_mask(y, bias, bias_of_target)
    return accuracy(_np(y)[m], _np(pred)[m]) if m.any() else float("nan")


def summary(
    y, bias, pred, num_targets: int, num_biases: int, train_counts=None, bias_of_target=None
) -> dict:
    """All the named accuracies of one prediction, side by side."""
    table = group_accuracy(y, bias, pred, num_targets, num_biases)
    out = {
        "plain": accuracy(y, pred),
        "worst_group": worst_group_accuracy(table),
        "mean_of_groups": mean_of_groups_accuracy(table),
        "aligned": aligned_accuracy(y, bias, pred, bias_of_target),
        "conflicting": conflicting_accuracy(y, bias, pred, bias_of_target),
    }
    if train_counts is not None:
        out["weighted"] = weighted_accuracy(table, train_counts)
    return out
