"""Where each profile's executed chapters and run records live, one rule for the runner, the
scorecard and the HTML extensions: the quick profile's at the top of ``book/`` and
``book/results/``, every other profile's in a sub-folder named after it (``book/full/``,
``book/results/full/``), so a full or smoke run never overwrites the quick copy."""

from __future__ import annotations

from pathlib import Path

MAIN_PROFILE = "quick"  # the book's own pages
APPENDIX_PROFILE = "full"  # rendered as the appendix "Full-profile runs"


def profile_folder(root: Path, profile: str) -> Path:
    """``root`` for the quick profile, ``root/<profile>`` for any other."""
    return root if profile == MAIN_PROFILE else root / profile
