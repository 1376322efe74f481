"""Shared code of the shortcut-learning course book.

One importable package is the single source of truth for everything that more than one chapter uses:
data sources and biased-dataset builders, models, the training loop, metrics, plots, the method
losses and the book runner. Chapters import from here and show the source of the method they teach
with ``show_source``.
"""

from helpers.cache import cache_root, checkpoint_dir
from helpers.device import pick_device
from helpers.seed import seed_everything

__all__ = ["cache_root", "checkpoint_dir", "seed_everything", "pick_device"]
