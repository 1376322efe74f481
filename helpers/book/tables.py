"""One table style for the book's pages: a caption, fractions as percentages with one decimal,
means with their spread as ``12.3 ± 0.4%``, other numbers with a fixed number of significant
digits, float labels as written (0.99, not 0.990000), a dash for a missing value, and headers in
words (``unbiased test accuracy``, not the metric key ``unbiased_acc``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

MISSING = "–"

# The reader-facing header of each metric key the chapters' histories and result dictionaries use.
# book_table shows these words in place of the keys (column and row labels, axis names); the data
# keep their keys, so ``percent`` predicates and the chapters' code still address them by key.
HEADERS: dict[str, str] = {
    # training histories (helpers.train.History and the chapters' own loops)
    "loss": "training loss",
    "acc": "training accuracy",
    "val_loss": "validation loss",
    "val_acc": "validation accuracy",
    "dev_loss": "dev loss",
    "dev_acc": "dev accuracy",
    "dev_paired_loss": "dev paired loss",
    "time_s": "time (s)",
    "ce": "cross-entropy",
    "ce_copy": "cross-entropy (copy)",
    "acc_copy": "accuracy (copy)",
    "consistency": "consistency loss",
    "pool_test_acc": "pool test accuracy",
    "lr": "learning rate",
    # test sets and accuracies
    "test_acc": "test accuracy",
    "biased_acc": "biased test accuracy",
    "unbiased_acc": "unbiased test accuracy",
    "conflicting_acc": "conflicting test accuracy",
    "aligned_acc": "aligned test accuracy",
    "raw_acc": "raw test accuracy",
    "raw_class0_acc": "raw test, class 0",
    "raw_class1_acc": "raw test, class 1",
    "biased_class0_acc": "biased test, class 0",
    "biased_class1_acc": "biased test, class 1",
    "colored_test_acc": "coloured test accuracy",
    "gray_test_acc": "grey test accuracy",
    "val_colored_acc": "coloured validation accuracy",
    "val_gray_acc": "grey validation accuracy",
    "test_colored_acc": "coloured test accuracy",
    "test_gray_acc": "grey test accuracy",
    "test_conflicting_acc": "conflicting test accuracy",
    "val_colored": "coloured validation",
    "val_gray": "grey validation",
    "test_colored": "coloured test",
    "test_gray": "grey test",
    "test_conflicting": "conflicting test",
    "clean_acc": "clean accuracy",
    "acc_after_cw": "accuracy after CW-L2",
    "acc_after_cw_ci_low": "after CW-L2, 95% CI low",
    "acc_after_cw_ci_high": "after CW-L2, 95% CI high",
    "mean_l2_of_successes": "mean L2 of a success",
    # group metrics (helpers.metrics)
    "worst_group": "worst group",
    "mean_of_groups": "mean of groups",
    "worst_group_acc": "worst-group accuracy",
    "mean_of_groups_acc": "mean-of-groups accuracy",
    # chapter 02's Fisher proportions
    "probe_share_image": "image share, val probe",
    "logged_prop_image": "“image” proportion as logged",
    "share_image": "image share, epoch mean",
    # hyperparameters
    "batch_size": "batch size",
    "weight_decay": "weight decay",
    "stage1_weight_decay": "stage-1 weight decay",
    "grad_clip": "gradient clip (norm)",
    "n_epochs": "epochs",
}


def header(label: object, headers: Mapping[str, str] | None = None) -> object:
    """The reader-facing words for a metric key (``headers`` first, then :data:`HEADERS`);
    anything else as it is."""
    if isinstance(label, str):
        if headers and label in headers:
            return headers[label]
        return HEADERS.get(label, label)
    return label


def mean_std(mean: float, std: float, *, percent: bool = False, digits: int = 1) -> str:
    """``12.3 ± 0.4%`` (a fraction as percent points, ``digits`` decimals) or ``0.123 ± 0.004``
    (``digits`` decimals); a missing spread (one seed) gives the mean alone, a missing mean a
    dash."""
    if mean is None or pd.isna(mean):
        return MISSING
    scale, unit = (100.0, "%") if percent else (1.0, "")
    if std is None or pd.isna(std):
        return f"{scale * mean:.{digits}f}{unit}"
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}{unit}"


def merge_mean_std(
    df: pd.DataFrame, percent: Iterable[object] | Callable[[object], bool] = (), digits: int = 1
) -> pd.DataFrame:
    """A table whose columns are (measure, "mean") and (measure, "std") pairs, as
    ``groupby(...).agg(["mean", "std"])`` writes them, as one text column ``mean ± std`` per
    measure. ``percent``: the measures (first-level labels) shown in percent. Other tables are
    returned unchanged."""
    if df.columns.nlevels != 2 or not set(df.columns.get_level_values(1)) <= {"mean", "std"}:
        return df
    in_percent = percent if callable(percent) else set(percent).__contains__
    merged = {}
    for measure in dict.fromkeys(df.columns.get_level_values(0)):
        if (measure, "mean") not in df:
            return df
        mean = df[(measure, "mean")]
        std = df[(measure, "std")] if (measure, "std") in df else pd.Series(np.nan, df.index)
        as_percent = bool(in_percent(measure))
        merged[measure] = [
            mean_std(m, s, percent=as_percent, digits=digits) for m, s in zip(mean, std)
        ]
    out = pd.DataFrame(merged, index=df.index)
    out.columns.name = df.columns.names[0]
    return out


def book_table(
    df: pd.DataFrame,
    caption: str,
    *,
    percent: Iterable[str] | Callable[[str], bool] | str = (),
    digits: int = 3,
    hide_index: bool = False,
    headers: Mapping[str, str] | None = None,
) -> Styler:
    """``df`` styled for the page. ``percent`` names the columns holding fractions (``"all"`` for
    every numeric column, or a predicate on the column name); they are shown as ``12.3%``. Other
    floats get ``digits`` significant digits, also inside text columns (a transposed table);
    integers and text are shown as they are; float index and column labels (a ρ, an ε) with up to
    six significant digits and no trailing zeros.

    Column pairs (measure, "mean") / (measure, "std") become one ``mean ± std`` column per
    measure. Metric keys among the labels and axis names are shown in words (:data:`HEADERS`,
    overridden or extended by ``headers``); ``percent`` still names the columns by key."""
    if not caption:
        raise ValueError("every table in the book has a caption")
    if df.columns.nlevels == 2 and set(df.columns.get_level_values(1)) <= {"mean", "std"}:
        measures = list(dict.fromkeys(df.columns.get_level_values(0)))
        if percent == "all":
            pick = {m for m in measures if pd.api.types.is_numeric_dtype(df[(m, "mean")])}
        elif callable(percent):
            pick = {m for m in measures if percent(str(m))}
        else:
            pick = set(percent)
            unknown = pick - set(measures)
            if unknown:
                raise ValueError(
                    f"percent columns {sorted(map(str, unknown))} are not in the table"
                )
        df, percent = merge_mean_std(df, pick), ()
    if percent == "all":
        as_percent = set(df.select_dtypes("number").columns)
    elif callable(percent):
        as_percent = {c for c in df.columns if percent(str(c))}
    else:
        as_percent = set(percent)
        unknown = as_percent - set(df.columns)
        if unknown:
            raise ValueError(f"percent columns {sorted(map(str, unknown))} are not in the table")
    formats = {}
    for column in df.columns:
        if column in as_percent:
            formats[column] = "{:.1%}"
        elif pd.api.types.is_float_dtype(df[column]):
            formats[column] = _number_format(df[column], digits)
        elif pd.api.types.is_object_dtype(df[column]):
            formats[column] = _mixed_format(df[column], digits)
    shown = df.rename_axis(
        index=[header(n, headers) for n in df.index.names],
        columns=[header(n, headers) for n in df.columns.names],
    )
    styler = shown.style.format(formats, na_rep=MISSING).set_caption(caption)
    label = _label_format(headers)
    for axis, labels in (("index", df.index), ("columns", df.columns)):
        for level in range(labels.nlevels):
            styler = styler.format_index(label, axis=axis, level=level, na_rep=MISSING)
    return styler.hide(axis="index") if hide_index else styler


def _label_format(headers: Mapping[str, str] | None) -> Callable[[object], str]:
    """An index or column label as the page shows it: a float as written (``{:g}``), a metric
    key in words, anything else as it is."""

    def fmt(label: object) -> str:
        if isinstance(label, float | np.floating):
            return f"{label:g}"
        return str(header(label, headers))

    return fmt


def _mixed_format(values: pd.Series, digits: int) -> Callable[[object], str]:
    """A text column that also holds numbers: each float as a float column would show it, the
    rest as it is."""
    floats = pd.Series([v for v in values if isinstance(v, float)], dtype=float)
    number = _number_format(floats, digits)
    return lambda v: number(v) if isinstance(v, float) else str(v)


def _number_format(values: pd.Series, digits: int) -> Callable[[float], str]:
    """Whole numbers (e.g. counts that a transpose turned into floats) with thousands separators;
    others with ``digits`` significant digits (in scientific notation only below 1e-4)."""
    finite = values.dropna()
    whole = bool(len(finite)) and bool((finite == finite.round()).all())

    def fmt(x: float) -> str:
        if whole or abs(x) >= 10**digits:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"

    return fmt
