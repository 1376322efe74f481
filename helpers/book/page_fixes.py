"""Sphinx extension: fixes of the page template and body that the browser test and a reader found.

- sphinx-thebe adds its inline configuration script twice under Sphinx 7, so every page logs
  "Identifier 'THEBE_JS_URL' has already been declared": identical scripts are kept once.
- pydata-sphinx-theme logs "Got invalid theme mode" when no default colour mode is set: the book
  opens in light mode (figures have white backgrounds); the reader can still switch.
- A "78.8 ± 0.1" table cell wrapped after the number in a narrow column: the spaces around ± in
  table cells become non-breaking, so a mean and its spread stay on one line.

Enabled in ``_config.yml`` (``sphinx.extra_extensions``).
"""

from __future__ import annotations

import re

DEFAULT_MODE = "light"
_TABLE_CELL = re.compile(r"(<t[dh]\b[^>]*>)(.*?)(</t[dh]>)", re.DOTALL)
_PLUS_MINUS = re.compile(r"[ \t]+±[ \t]+")


def keep_spreads_together(html: str) -> str:
    """``html`` with the spaces around ± inside table cells made non-breaking."""

    def cell(m: re.Match) -> str:
        return m.group(1) + _PLUS_MINUS.sub("\u00a0±\u00a0", m.group(2)) + m.group(3)

    return _TABLE_CELL.sub(cell, html)


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


def setup(app):
    # after the themes' own html-page-context handlers (default priority 500)
    app.connect("html-page-context", fix_page, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
