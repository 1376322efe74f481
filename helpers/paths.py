"""Where the book keeps downloaded data, checkpoints and results.

The cache root is, in order of precedence: an explicit ``root`` argument, the environment variable
``SHORTCUT_BOOK_DATA``, or ``data/`` at the repository root (git-ignored).
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "SHORTCUT_BOOK_DATA"


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data cache directory, creating it if needed."""
    if root is None:
        root = os.environ.get(ENV_VAR) or REPO_ROOT / "data"
    path = Path(root).expanduser().resolve()
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint_dir(root: str | os.PathLike | None = None) -> Path:
    """Return ``<cache root>/checkpoints``, creating it if needed."""
    path = cache_root(root) / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path
