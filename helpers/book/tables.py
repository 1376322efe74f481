"""One table style for the book's pages: a caption, fractions as percentages with one decimal,
other numbers with a fixed number of significant digits, float labels as written (0.99, not
0.990000), and a dash for a missing value."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pandas as pd
from pandas.io.formats.style import Styler

MISSING = "–"


def book_table(
    df: pd.DataFrame,
    caption: str,
    *,
    percent: Iterable[str] | Callable[[str], bool] | str = (),
    digits: int = 3,
    hide_index: bool = False,
) -> Styler:
    """``df`` styled for the page. ``percent`` names the columns holding fractions (``"all"`` for
    every numeric column, or a predicate on the column name); they are shown as ``12.3%``. Other
    floats get ``digits`` significant digits, also inside text columns (a transposed table);
    integers and text are shown as they are; float index and column labels (a ρ, an ε) with up to
    six significant digits and no trailing zeros."""
    if not caption:
        raise ValueError("every table in the book has a caption")
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
    styler = df.style.format(formats, na_rep=MISSING).set_caption(caption)
    for axis, labels in (("index", df.index), ("columns", df.columns)):
        for level in range(labels.nlevels):
            if pd.api.types.is_float_dtype(labels.get_level_values(level)):
                styler = styler.format_index("{:g}", axis=axis, level=level, na_rep=MISSING)
    return styler.hide(axis="index") if hide_index else styler


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
