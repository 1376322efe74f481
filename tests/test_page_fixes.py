"""The page fixes of the HTML book (helpers/book/page_fixes.py)."""

from helpers.book.page_fixes import fix_page, keep_spreads_together

NBSP = "\u00a0"


def test_a_mean_and_its_spread_stay_on_one_line_in_table_cells():
    html = (
        "<p>text 1 ± 2</p><table><tr><th>a ± b</th>"
        '<td class="data row0">78.8 ± 0.1</td><td>12.3%</td></tr></table>'
    )
    fixed = keep_spreads_together(html)
    assert f'<td class="data row0">78.8{NBSP}±{NBSP}0.1</td>' in fixed
    assert f"<th>a{NBSP}±{NBSP}b</th>" in fixed
    assert "<p>text 1 ± 2</p>" in fixed  # prose keeps its ordinary spaces
    assert "<td>12.3%</td>" in fixed


def test_fix_page_rewrites_the_body_and_sets_a_default_mode():
    context = {"body": "<table><tr><td>1.0 ± 0.5</td></tr></table>", "script_files": []}
    fix_page(None, "page", "page.html", context, None)
    assert context["body"] == f"<table><tr><td>1.0{NBSP}±{NBSP}0.5</td></tr></table>"
    assert context["default_mode"] == "light"


def test_metric_key_headers_in_words_and_code_names_may_break():
    from helpers.book.page_fixes import headers_in_words

    html = (
        '<table><tr><th class="col_heading level0 col1">val_acc</th><th>paired_random_pure</th>'
        "<th>noise</th><td>val_acc</td></tr></table><p>paired_random_pure</p>"
    )
    fixed = headers_in_words(html)
    assert '<th class="col_heading level0 col1">validation accuracy</th>' in fixed
    assert "<th>paired_<wbr>random_<wbr>pure</th>" in fixed
    assert "<th>noise</th><td>val_acc</td>" in fixed  # data cells and prose unchanged
    assert "<p>paired_random_pure</p>" in fixed


def test_tables_of_many_columns_are_marked_wide():
    from helpers.book.page_fixes import WIDE_COLUMNS, columns, mark_wide_tables

    def table(n, attrs=""):
        cells = "".join(f"<td>{i}</td>" for i in range(n))
        return (
            f'<table{attrs}><thead><tr><th colspan="2">a</th></tr></thead><tr>{cells}</tr></table>'
        )

    assert columns(table(5)) == 5 and columns('<tr><th colspan="3">x</th><td>1</td></tr>') == 4
    narrow, wide = table(WIDE_COLUMNS - 1), table(WIDE_COLUMNS, ' class="table" id="t"')
    fixed = mark_wide_tables(narrow + "<p>x</p>" + wide)
    assert fixed.startswith(narrow + "<p>x</p>")
    assert '<table class="table book-wide" id="t">' in fixed
    assert '<table class="book-wide">' in mark_wide_tables(table(WIDE_COLUMNS))


def test_figure_alt_text_from_the_notebook_output_metadata(tmp_path):
    import base64
    import hashlib
    import json

    from helpers.book.page_fixes import notebook_alts, set_image_alts

    png = b"\x89PNG fake bytes"
    digest = hashlib.sha256(png).hexdigest()
    output = {
        "output_type": "display_data",
        "data": {"image/png": base64.b64encode(png).decode(), "text/plain": "fig"},
        "metadata": {"image/png": {"width": 10, "height": 5, "alt": 'Accuracy "per" epoch'}},
    }
    nb = tmp_path / "c.ipynb"
    nb.write_text(json.dumps({"cells": [{"cell_type": "code", "outputs": [output]}]}))
    alts = notebook_alts(nb)
    assert alts == {digest: 'Accuracy "per" epoch'}
    page = (
        f'<img alt="../_images/{digest}.png" src="../_images/{digest}.png" style="width: 9px" />'
        f'<img alt="x.png" src="../_images/{"0" * 64}.png" />'
    )
    fixed = set_image_alts(page, alts)
    assert f'<img alt="Accuracy &quot;per&quot; epoch" src="../_images/{digest}.png"' in fixed
    assert f'<img alt="x.png" src="../_images/{"0" * 64}.png" />' in fixed  # no alt recorded


def test_a_stale_executed_copy_says_so_and_a_current_one_does_not(monkeypatch, tmp_path):
    from helpers.book import profile_links as PL
    from helpers.book import runner

    states = {}
    monkeypatch.setattr(runner, "state_of", lambda src, profile: states[profile])
    monkeypatch.setattr(runner, "results_path", lambda stem, profile: tmp_path / "r.json")
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_x.ipynb").write_text("{}")
    (tmp_path / "r.json").write_text('{"git_commit": "abc123", "finished_utc": "2026-12-05T08"}')
    states.update(full="stale", quick="current")
    note = PL.stale_note(tmp_path, "book/full", "01_x")
    assert PL.STALE_CLASS in note and "commit abc123, 2026-12-05" in note
    assert PL.stale_note(tmp_path, "book", "01_x") == ""
