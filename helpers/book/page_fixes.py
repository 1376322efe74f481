"""Sphinx extension: fixes of the page template and body that the browser test and a reader found.

- sphinx-thebe adds its inline configuration script twice under Sphinx 7, so every page logs
  "Identifier 'THEBE_JS_URL' has already been declared": identical scripts are kept once.
- pydata-sphinx-theme logs "Got invalid theme mode" when no default colour mode is set: the book
  opens in light mode (figures have white backgrounds); the reader can still switch.
- A "78.8 ± 0.1" table cell wrapped after the number in a narrow column: the spaces around ± in
  table cells become non-breaking, so a mean and its spread stay on one line.
- Table headers that are metric keys (``val_acc``) in an output written before
  ``helpers.book.tables.HEADERS`` named them are shown in its words; any other snake_case header
  (a method's code name such as ``paired_random_pure``) may break after its underscores, so it
  does not widen its column past the text column.
- A table of many columns (``WIDE_COLUMNS`` cells in a row or more) gets the class ``book-wide``,
  which _static/book.css sets in a smaller font, so that it fits the text column at 1280 px.
- A figure's ``<img>`` had its file name as alt text: a notebook image output whose metadata holds
  an ``alt`` (helpers.plots writes it for every inline figure) gets that text. myst-nb names the
  image file after the SHA-256 of its bytes, which ties the output to its ``<img>``.

Enabled in ``_config.yml`` (``sphinx.extra_extensions``).
"""

from __future__ import annotations

import hashlib
import html as html_lib
import json
import re
from binascii import a2b_base64
from pathlib import Path

DEFAULT_MODE = "light"
_TABLE_CELL = re.compile(r"(<t[dh]\b[^>]*>)(.*?)(</t[dh]>)", re.DOTALL)
_PLUS_MINUS = re.compile(r"[ \t]+±[ \t]+")
_HEADER_CELL = re.compile(r"(<th\b[^>]*>)([^<]*)(</th>)")
_SNAKE = re.compile(r"^[A-Za-z0-9]+(?:_[A-Za-z0-9]+)+$")
_TABLE = re.compile(r"(<table\b)([^>]*)(>)(.*?</table>)", re.DOTALL)
_ROW = re.compile(r"<tr\b.*?</tr>", re.DOTALL)
_CELL_START = re.compile(r"<t[dh]\b[^>]*>")
_COLSPAN = re.compile(r'colspan="?(\d+)')
WIDE_COLUMNS = 8
WIDE_CLASS = "book-wide"


def keep_spreads_together(html: str) -> str:
    """``html`` with the spaces around ± inside table cells made non-breaking."""

    def cell(m: re.Match) -> str:
        return m.group(1) + _PLUS_MINUS.sub("\u00a0±\u00a0", m.group(2)) + m.group(3)

    return _TABLE_CELL.sub(cell, html)


def headers_in_words(html: str) -> str:
    """``html`` with each table header cell that is a metric key shown in words, and the other
    snake_case header cells given a line-break opportunity after each underscore."""
    from helpers.book.tables import HEADERS

    def cell(m: re.Match) -> str:
        text = m.group(2).strip()
        if text in HEADERS:
            text = HEADERS[text]
        elif _SNAKE.match(text):
            text = text.replace("_", "_<wbr>")
        else:
            return m.group(0)
        return m.group(1) + text + m.group(3)

    return _HEADER_CELL.sub(cell, html)


def columns(table_html: str) -> int:
    """The most cells in one row of a table (a ``colspan`` counts its columns)."""
    most = 0
    for row in _ROW.findall(table_html):
        n = 0
        for start in _CELL_START.findall(row):
            span = _COLSPAN.search(start)
            n += int(span.group(1)) if span else 1
        most = max(most, n)
    return most


def mark_wide_tables(html: str) -> str:
    """``html`` with every table of ``WIDE_COLUMNS`` columns or more in the class ``book-wide``."""

    def table(m: re.Match) -> str:
        attrs = m.group(2)
        if columns(m.group(4)) < WIDE_COLUMNS or WIDE_CLASS in attrs:
            return m.group(0)
        klass = re.search(r'class="([^"]*)"', attrs)
        if klass:
            attrs = attrs.replace(klass.group(0), f'class="{klass.group(1)} {WIDE_CLASS}"', 1)
        else:
            attrs += f' class="{WIDE_CLASS}"'
        return m.group(1) + attrs + m.group(3) + m.group(4)

    return _TABLE.sub(table, html)


_IMG = re.compile(r"<img\b[^>]*>")
_IMG_SRC = re.compile(r'\bsrc="[^"]*?([0-9a-f]{64})\.png"')
_IMG_ALT = re.compile(r'\balt="[^"]*"')


def notebook_alts(notebook: Path) -> dict[str, str]:
    """SHA-256 (hex) of each PNG output of ``notebook`` that carries alt text → the text."""
    try:
        cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError):
        return {}
    alts = {}
    for cell in cells:
        for output in cell.get("outputs", []):
            png = output.get("data", {}).get("image/png")
            alt = output.get("metadata", {}).get("image/png", {}).get("alt")
            if png and alt:
                png = "".join(png) if isinstance(png, list) else png
                alts[hashlib.sha256(a2b_base64(png)).hexdigest()] = str(alt)
    return alts


def set_image_alts(html: str, alts: dict[str, str]) -> str:
    """``html`` with the alt attribute of each ``<img>`` whose file is a key of ``alts`` (the
    SHA-256 file names myst-nb writes) set to its text."""

    def img(m: re.Match) -> str:
        tag = m.group(0)
        src = _IMG_SRC.search(tag)
        if not src or src.group(1) not in alts:
            return tag
        alt = f'alt="{html_lib.escape(alts[src.group(1)], quote=True)}"'
        if _IMG_ALT.search(tag):
            return _IMG_ALT.sub(lambda _: alt, tag, count=1)
        return tag.replace("<img", f"<img {alt}", 1)

    return _IMG.sub(img, html)


def _source(app, pagename: str) -> Path | None:
    try:
        return Path(app.env.doc2path(pagename))
    except Exception:  # no environment (a unit test) or no such document
        return None


def _script_key(script) -> tuple:
    """What the page would print for the script: its file and its attributes (inline body)."""
    attributes = dict(getattr(script, "attributes", {}) or {})
    attributes.pop("priority", None)
    filename = getattr(script, "filename", None) or ""  # an inline script's is None or ""
    return (filename, tuple(sorted((k, str(v)) for k, v in attributes.items())))


def fix_page(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if scripts:
        seen, kept = set(), []
        for script in scripts:
            key = _script_key(script)
            if key not in seen:
                seen.add(key)
                kept.append(script)
        context["script_files"] = kept
    if not context.get("default_mode"):
        context["default_mode"] = DEFAULT_MODE
    if "±" in context.get("body", ""):
        context["body"] = keep_spreads_together(context["body"])
    if app is not None and "<img" in context.get("body", ""):
        source = _source(app, pagename)
        if source is not None and source.suffix == ".ipynb":
            context["body"] = set_image_alts(context["body"], notebook_alts(source))
    if "<table" in context.get("body", ""):
        context["body"] = mark_wide_tables(headers_in_words(context["body"]))


def setup(app):
    # after the themes' own html-page-context handlers (default priority 500)
    app.connect("html-page-context", fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
