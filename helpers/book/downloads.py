"""The book's downloads: a zip of the executed notebooks that runs where it is unpacked, and the
list of downloads the page header links to.

As a Sphinx extension (``_config.yml``, ``sphinx.extra_extensions``) every HTML build packs
``notebooks.zip`` into the built book and beside it (``_build/notebooks.zip``), and writes
``_static/book_downloads_available.js``, which tells ``_static/book_downloads.js`` which of
``notebooks.zip`` and ``book.pdf`` (written by ``make pdf``, :mod:`helpers.book.pdf`) the header can
link to.

The zip holds the executed chapters as ``notebooks/NN_name.ipynb`` (full-profile runs in
``notebooks/full/``), ``notebooks/profiles/``, the ``helpers`` package and the install files
(``pyproject.toml``, ``environment.yml``, ``Makefile``, ``README.md``), so that
``pip install -e .`` and ``jupyter lab notebooks/`` (or ``make lab``) run a downloaded chapter.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

from helpers.book.layout import APPENDIX_PROFILE, profile_folder
from helpers.cache import REPO_ROOT

ZIP_NAME, PDF_NAME = "notebooks.zip", "book.pdf"
AVAILABLE_JS = "book_downloads_available.js"
TOP = "shortcut-book"  # the folder the zip unpacks into
INSTALL_FILES = ("pyproject.toml", "environment.yml", "Makefile", "README.md")
# a fixed timestamp: the same files give the same zip
STAMP = (2020, 1, 1, 0, 0, 0)
README = """\
The executed chapters of the course book "Shortcut learning and bias mitigation in image
classifiers", with the code they import.

    python3 -m venv .venv && .venv/bin/pip install -e .   # or: conda env create -f environment.yml
    .venv/bin/jupyter lab notebooks/                      # run a chapter top to bottom

notebooks/NN_name.ipynb are the quick-profile runs the book shows (outputs included),
notebooks/full/ the full-profile runs; notebooks/profiles/ holds every chapter's parameter schema.
Data and trained networks are cached under data/ (or $SHORTCUT_BOOK_DATA). README.md explains
papermill, the profiles and GPUs.
"""


def _members(root: Path):
    """(path in the zip, file on disk) for everything the zip holds."""
    book = root / "book"
    for nb in sorted(book.glob("[0-9][0-9]_*.ipynb")):
        yield f"notebooks/{nb.name}", nb
    for nb in sorted(profile_folder(book, APPENDIX_PROFILE).glob("[0-9][0-9]_*.ipynb")):
        yield f"notebooks/{APPENDIX_PROFILE}/{nb.name}", nb
    for spec in sorted((root / "notebooks" / "profiles").glob("*.yaml")):
        yield f"notebooks/profiles/{spec.name}", spec
    for path in sorted((root / "helpers").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path.relative_to(root).as_posix(), path
    for name in INSTALL_FILES:
        if (root / name).is_file():
            yield name, root / name


def pack_notebooks(dest: Path, root: Path = REPO_ROOT) -> Path:
    """Write the notebooks zip to ``dest`` (atomically) and return it."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
        zf.writestr(zipfile.ZipInfo(f"{TOP}/README.txt", STAMP), README)
        for name, path in _members(root):
            info = zipfile.ZipInfo(f"{TOP}/{name}", STAMP)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (path.stat().st_mode & 0o777) << 16
            zf.writestr(info, path.read_bytes())
    partial.replace(dest)
    return dest


def write_available(html_dir: Path) -> list[str]:
    """Record which downloads sit in the built book, for the header's links; return them."""
    available = [name for name in (PDF_NAME, ZIP_NAME) if (html_dir / name).is_file()]
    static = html_dir / "_static"
    static.mkdir(parents=True, exist_ok=True)
    (static / AVAILABLE_JS).write_text(f"window.BOOK_DOWNLOADS = {json.dumps(available)};\n")
    return available


def _build_finished(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    html_dir = Path(app.outdir)
    packed = pack_notebooks(html_dir.parent / ZIP_NAME, Path(app.srcdir))
    shutil.copy2(packed, html_dir / ZIP_NAME)
    write_available(html_dir)


def setup(app):
    app.add_js_file(AVAILABLE_JS)
    app.connect("build-finished", _build_finished)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
