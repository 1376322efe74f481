"""Sphinx extension: a note at the top of each chapter page that links to the chapter's
full-profile run when one is in the book (book/full/<chapter>.ipynb), and on that run's page a
note that links back to the quick chapter. A page whose executed copy is older than the chapter's
current code (the runner's ``stale``) says so first, with the commit and date of its run.

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
        note = ""
    if folder in ("book", f"book/{FULL}"):
        context["body"] = stale_note(src, folder, stem) + note + context["body"]


STALE_CLASS = "stale-run"


def stale_note(root: Path, folder: str, stem: str) -> str:
    """A warning for an executed copy the runner calls stale (its chapter's source, parameters or
    helpers code changed since it ran), or an empty string."""
    import json

    from helpers.book import runner
    from helpers.book.layout import MAIN_PROFILE

    profile = FULL if folder.endswith(f"/{FULL}") else MAIN_PROFILE
    src = root / "notebooks" / f"{stem}.ipynb"
    if not src.is_file() or runner.state_of(src, profile) != "stale":
        return ""
    record = runner.results_path(stem, profile)
    try:
        r = json.loads(record.read_text())
        when = f" (commit {r['git_commit']}, {r['finished_utc'][:10]})"
    except (OSError, ValueError, KeyError):
        when = ""
    return (
        f'<div class="admonition warning {STALE_CLASS}"><p>This run{html.escape(when)} was '
        "executed with an earlier version of the chapter's code, parameters or helpers, and has "
        "not been executed again since: its numbers and figures are what that version measured, "
        "and its page lacks later fixes (figure descriptions among them).</p></div>\n"
    )


def setup(app):
    app.connect("html-page-context", add_profile_link)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
