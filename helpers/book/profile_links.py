"""Sphinx extension: a note at the top of each chapter page that links to the chapter's
full-profile run when one is in the book (book/full/<chapter>.ipynb), and on that run's page a
note that links back to the quick chapter.

Enabled in ``_config.yml`` (``sphinx.extra_extensions``).
"""

from __future__ import annotations

import html
import posixpath
from pathlib import Path

from helpers.book.layout import APPENDIX_PROFILE as FULL


def _note(text: str, target: str, label: str) -> str:
    return (
        '<div class="admonition note profile-link"><p>'
        f'{html.escape(text)} <a class="reference internal" href="{html.escape(target)}">'
        f"{html.escape(label)}</a>.</p></div>\n"
    )


def add_profile_link(app, pagename, templatename, context, doctree):
    if doctree is None or "body" not in context:
        return
    folder, _, stem = pagename.rpartition("/")
    if not stem[:2].isdigit():
        return
    src = Path(app.srcdir)
    if folder == "book" and (src / "book" / FULL / f"{stem}.ipynb").is_file():
        note = _note(
            "This page is the quick-profile run. The same chapter at the paper's scale:",
            posixpath.join(FULL, f"{stem}.html"),
            "full-profile run",
        )
    elif folder == f"book/{FULL}" and (src / "book" / f"{stem}.ipynb").is_file():
        note = _note(
            "This page is the full-profile run (the paper's or reference code's setting). The "
            "chapter as the book presents it:",
            f"../{stem}.html",
            "quick-profile chapter",
        )
    else:
        return
    context["body"] = note + context["body"]


def setup(app):
    app.connect("html-page-context", add_profile_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
