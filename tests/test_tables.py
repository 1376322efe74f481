import numpy as np
import pandas as pd
import pytest

from helpers.book.tables import book_table


def test_percent_counts_missing_and_caption():
    df = pd.DataFrame(
        {"acc": [0.9961, np.nan], "images": [12000.0, 480.0], "loss": [0.0123, 1.5]},
        index=["a", "b"],
    )
    html = book_table(df, "A caption", percent=["acc"]).to_html()
    assert "A caption" in html
    assert "99.6%" in html and "–" in html  # fraction as percent, missing value as a dash
    assert "12,000" in html and "480" in html and "e+" not in html  # counts stay counts
    assert "0.0123" in html and "1.5" in html


def test_percent_predicate_and_all():
    df = pd.DataFrame({"val_acc": [0.5], "loss": [0.25]})
    assert "25.0%" not in book_table(df, "c", percent=lambda c: c.endswith("_acc")).to_html()
    assert "25.0%" in book_table(df, "c", percent="all").to_html()


def test_unknown_column_and_missing_caption_are_errors():
    df = pd.DataFrame({"a": [0.1]})
    with pytest.raises(ValueError, match="not in the table"):
        book_table(df, "c", percent=["b"])
    with pytest.raises(ValueError, match="caption"):
        book_table(df, "")


def test_float_labels_and_numbers_inside_text_columns():
    df = pd.DataFrame(
        {"acc": [0.5, 0.25], "set-up": ["official", 25.0]},
        index=pd.MultiIndex.from_tuples([("top_k", 0.1), ("official", 2.0)], names=["rule", "p"]),
    )
    html = book_table(df.rename(columns={0.5: "x"}), "c", percent=["acc"]).to_html()
    assert ">0.1<" in html and ">2<" in html and "0.100000" not in html  # index level
    assert ">25<" in html and "25.000000" not in html  # a float in a text column
    assert ">official<" in html
    wide = pd.DataFrame([[1.0, 2.0]], columns=pd.Index([0.99, 0.997], name="ρ"))
    html = book_table(wide, "c").to_html()
    assert ">0.99<" in html and ">0.997<" in html and "0.990000" not in html  # column labels


def test_tiny_values_keep_their_significant_digits():
    html = book_table(pd.DataFrame({"F": [8.496512e-12, 2.318]}), "c", digits=7).to_html()
    assert "8.496512e-12" in html and "2.318" in html


def test_metric_keys_are_shown_in_words_and_still_addressed_by_key():
    history = pd.DataFrame(
        {"loss": [0.5, 0.25], "val_acc": [0.5, 0.75], "time_s": [3.0, 2.5]},
        index=pd.Index([1, 2], name="epoch"),
    )
    html = book_table(history, "c", percent=lambda c: c.endswith("_acc")).to_html()
    assert ">validation accuracy<" in html and ">time (s)<" in html and ">training loss<" in html
    assert "val_acc" not in html and "time_s" not in html
    assert "75.0%" in html and ">epoch<" in html
    rows = pd.DataFrame({"value": [0.2, 0.6]}, index=["worst_group", "mean_of_groups"])
    html = book_table(rows, "c", percent="all").to_html()
    assert ">worst group<" in html and ">mean of groups<" in html and "20.0%" in html
    html = book_table(history, "c", headers={"val_acc": "val. acc."}).to_html()
    assert ">val. acc.<" in html  # a chapter's own words win


def test_mean_and_std_columns_become_one_column():
    by_seed = pd.DataFrame(
        {"rule": ["a", "a", "b"], "biased_acc": [0.80, 0.84, 0.5], "pixels": [10.0, 12.0, 5.0]}
    )
    spread = by_seed.groupby("rule")[["biased_acc", "pixels"]].agg(["mean", "std"])
    html = book_table(spread, "c", percent=["biased_acc"]).to_html()
    assert "82.0 ± 2.8%" in html
    assert "11.0 ± 1.4" in html and ">50.0%<" in html  # one seed: the mean alone
    assert ">biased test accuracy<" in html and ">mean<" not in html and ">std<" not in html


def test_mean_std_text():
    from helpers.book.tables import mean_std

    assert mean_std(0.9381, 0.0178, percent=True) == "93.8 ± 1.8%"
    assert mean_std(8.0, 0.0) == "8.0 ± 0.0"
    assert mean_std(float("nan"), 0.1) == "–"
