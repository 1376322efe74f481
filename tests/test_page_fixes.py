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
