"""The notebooks zip: the executed chapters with the helpers package and the install files, laid
out so that a chapter runs where the zip is unpacked."""

import subprocess
import sys
import zipfile

from helpers.book import downloads
from helpers.cache import REPO_ROOT


def test_the_zip_holds_what_a_chapter_needs(tmp_path):
    path = downloads.pack_notebooks(tmp_path / "notebooks.zip")
    names = set(zipfile.ZipFile(path).namelist())
    top = downloads.TOP
    for nb in (REPO_ROOT / "book").glob("[0-9][0-9]_*.ipynb"):
        assert f"{top}/notebooks/{nb.name}" in names
        assert f"{top}/notebooks/profiles/{nb.stem}.yaml" in names
    for name in ("pyproject.toml", "environment.yml", "Makefile", "README.md", "README.txt"):
        assert f"{top}/{name}" in names
    assert f"{top}/helpers/__init__.py" in names
    assert f"{top}/helpers/book/runner.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)
    # the same files give the same bytes (fixed timestamps)
    again = downloads.pack_notebooks(tmp_path / "again.zip")
    assert again.read_bytes() == path.read_bytes()


def test_an_unpacked_chapter_finds_its_code_and_parameters(tmp_path):
    """From the unpacked folder, helpers resolves there, and a chapter's parameters and code hash
    load (what start_chapter does first)."""
    zipfile.ZipFile(downloads.pack_notebooks(tmp_path / "n.zip")).extractall(tmp_path)
    root = tmp_path / downloads.TOP
    code = (
        "import helpers, sys; from pathlib import Path\n"
        "from helpers.cache import REPO_ROOT\n"
        "from helpers.book.params import profile_values\n"
        "from helpers.book.closure import code_hash\n"
        "assert REPO_ROOT == Path.cwd(), (REPO_ROOT, Path.cwd())\n"
        "profile_values('01_shortcut_learning', 'quick')\n"
        "print(code_hash(REPO_ROOT / 'notebooks' / '01_shortcut_learning.ipynb'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 64
