"""Checkpoint cache keyed by a run's configuration: load when present, otherwise train and save.

A chapter re-run with the same parameters loads its trained networks in seconds (the UvA pattern). Files are
written atomically with a SHA-256 sidecar and loaded with ``torch.load(..., weights_only=True)``; a file whose
checksum does not match is ignored and the run retrains.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from helpers.atomic import atomic_write_bytes, atomic_write_text, file_digest
from helpers.paths import checkpoint_dir

CACHE_FORMAT = 1


def config_key(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable configuration."""
    blob = json.dumps({"format": CACHE_FORMAT, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(name: str, config: Mapping[str, Any], root=None) -> Path:
    return checkpoint_dir(root) / f"{name}-{config_key(config)}.pt"


def save_checkpoint(path: Path, modules: Mapping[str, nn.Module], extra: Mapping[str, Any], config: Mapping) -> None:
    buf = io.BytesIO()
    torch.save({
        "config": json.dumps(config, sort_keys=True, default=str),
        "state": {k: {n: t.detach().cpu() for n, t in m.state_dict().items()} for k, m in modules.items()},
        "extra": dict(extra),
    }, buf)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    atomic_write_text(path.with_suffix(".sha256"), hashlib.sha256(data).hexdigest() + "\n")


def load_checkpoint(path: Path, modules: Mapping[str, nn.Module]) -> dict | None:
    """Load weights into ``modules`` and return the saved ``extra``; None if absent or corrupt."""
    sidecar = path.with_suffix(".sha256")
    if not path.is_file() or not sidecar.is_file():
        return None
    if file_digest(path) != sidecar.read_text().strip():
        print(f"checkpoint {path.name}: checksum mismatch, ignoring it and retraining")
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if set(blob["state"]) != set(modules):
        return None
    for k, m in modules.items():
        m.load_state_dict(blob["state"][k])
    return blob["extra"]


def cached_run(name: str, config: Mapping[str, Any], modules: Mapping[str, nn.Module],
               train_fn: Callable[[], Mapping[str, Any]], *, root=None, force: bool = False) -> dict:
    """Load ``modules`` from the checkpoint for ``config`` or call ``train_fn()`` and save them.

    ``train_fn`` trains the modules in place and returns a dict of plain values (history rows, selected epoch,
    …) that is stored with the weights and returned on every later call. ``force=True`` retrains.
    """
    path = checkpoint_path(name, config, root)
    if not force and os.environ.get("SHORTCUT_BOOK_RETRAIN") != "1":
        extra = load_checkpoint(path, modules)
        if extra is not None:
            print(f"loaded checkpoint {path.name} (delete it or pass force=True to retrain)")
            return {**extra, "from_cache": True}
    extra = dict(train_fn())
    save_checkpoint(path, modules, extra, dict(config))
    return {**extra, "from_cache": False}
