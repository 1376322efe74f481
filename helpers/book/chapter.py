"""The life of one executed chapter: validated parameters, device, timer and the results record.

A chapter's first code cell after its ``parameters`` cell is::

    from helpers.book.chapter import start_chapter
    run = start_chapter("01_shortcut_learning", globals())

and its last cell::

    run.finish(metrics={...}, seeds=[...])

which shows profile, device, seeds, wall time and git commit, and writes ``<chapter>.json`` to the
results directory (``$SHORTCUT_BOOK_RESULTS`` when the book runner executes the chapter, else
``<cache>/results``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helpers.book.closure import training_code_hash
from helpers.book.params import parameters_from_namespace, swept
from helpers.cache import (
    REPO_ROOT,
    atomic_write_text,
    cache_root,
    reset_training_ledger,
    training_ledger,
)
from helpers.device import describe, deterministic_cublas, pick_device
from helpers.hardware import cpu_model
from helpers.plots import use_book_style

RESULTS_ENV = "SHORTCUT_BOOK_RESULTS"


def git_commit() -> str:
    """Commit the run used: ``<sha>``, with ``-dirty`` when helpers/ or notebooks/ differ from
    it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()

    try:
        sha = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--", "helpers", "notebooks")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha or "unknown") + ("-dirty" if sha and dirty else "")


def training_summary(ledger: list[dict]) -> dict:
    """How much of the chapter's time was training: the networks trained in this execution and
    their seconds, the networks loaded from the checkpoint cache and the seconds their original
    training took (``None`` when a loaded checkpoint predates that record)."""
    trained = [e for e in ledger if not e["from_cache"]]
    loaded = [e for e in ledger if e["from_cache"]]
    loaded_times = [e["train_seconds"] for e in loaded]
    return {
        "networks_trained": len(trained),
        "train_time_s": round(sum(e["train_seconds"] for e in trained), 1),
        "networks_loaded": len(loaded),
        "loaded_original_train_time_s": (
            round(sum(loaded_times), 1) if all(t is not None for t in loaded_times) else None
        ),
    }


def describe_training(summary: Mapping[str, Any]) -> str:
    """One line for the reader: trained now, loaded from the cache, and what each cost."""
    parts = []
    if summary["networks_trained"]:
        parts.append(
            f"{summary['networks_trained']} trained in this run ({summary['train_time_s']:.0f} s)"
        )
    if summary["networks_loaded"]:
        original = summary["loaded_original_train_time_s"]
        when = f"; their training took {original:.0f} s" if original is not None else ""
        parts.append(f"{summary['networks_loaded']} loaded from the checkpoint cache{when}")
    return "; ".join(parts) if parts else "nothing trained"


def _jsonable(value: Any) -> Any:
    """Convert tensors / numpy scalars / NaN in a metrics tree to plain JSON (NaN → None)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if torch.is_tensor(value):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass
class ChapterRun:
    chapter: str
    params: dict
    device: torch.device
    code: str = ""  # hash of the training code the chapter imports (closure.training_code_hash)
    started: float = field(default_factory=time.perf_counter)

    @property
    def profile(self) -> str:
        return self.params.get("profile", "custom")

    @property
    def cpu(self) -> str:
        """The processor's model name (the same epoch takes up to 3× longer on some 2-core CPUs
        than on others, and float rounding can differ between CPU kinds)."""
        return cpu_model()

    def cache_config(self, **cell: Any) -> dict:
        """The key of one cached training cell: every validated parameter except the grid axes
        (``sweep: true`` in the schema) and the plot-only ``profile``/``device`` names, the cell's
        own values (its grid coordinates, overrides and data identity, which win over the
        parameters), the device type it trains on, and the hash of the helpers code the chapter
        runs. Anything else that changes invalidates the cache."""
        axes = swept(self.chapter) | {"profile", "device"}
        fixed = {k: v for k, v in self.params.items() if k not in axes}
        return {
            "chapter": self.chapter,
            **fixed,
            **cell,
            "device_type": self.device.type,
            "code": self.code,
        }

    def results_dir(self) -> Path:
        path = Path(os.environ.get(RESULTS_ENV) or cache_root() / "results")
        path.mkdir(parents=True, exist_ok=True)
        return path

    def finish(self, metrics: Mapping[str, Any], seeds) -> dict:
        """Record the run (shown as a table and written as JSON); returns the record."""
        record = {
            "chapter": self.chapter,
            "profile": self.profile,
            "device": describe(self.device),
            "cpu": self.cpu,
            "seeds": list(seeds) if isinstance(seeds, (list, tuple)) else [seeds],
            "wall_time_s": round(time.perf_counter() - self.started, 1),
            "training": training_summary(training_ledger()),
            "git_commit": git_commit(),
            "finished_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "parameters": _jsonable(self.params),
            "metrics": _jsonable(metrics),
        }
        path = self.results_dir() / f"{self.chapter}.json"
        atomic_write_text(path, json.dumps(record, indent=2, sort_keys=False) + "\n")
        width = max(
            len(k)
            for k in ("profile", "device", "seeds", "wall time", "git commit", "results file")
        )
        for key, value in [
            ("profile", record["profile"]),
            ("device", record["device"]),
            ("cpu", record["cpu"]),
            ("seeds", record["seeds"]),
            ("wall time", f"{record['wall_time_s']:.1f} s"),
            ("networks", describe_training(record["training"])),
            ("git commit", record["git_commit"]),
            ("results file", path.name),
        ]:
            print(f"{key:<{width}}  {value}")
        return record


def start_chapter(chapter: str, namespace: Mapping[str, Any]) -> ChapterRun:
    """Validate the chapter's parameters from the notebook's globals, pick the device, set the plot
    style."""
    # before the chapter's first CUDA work (chapter 06 trains before seed_everything)
    deterministic_cublas()
    params = parameters_from_namespace(chapter, namespace)
    device = pick_device(params.get("device"))
    use_book_style()
    reset_training_ledger()  # this execution's training only (a kernel may run a chapter twice)
    print(f"{chapter}: profile={params.get('profile', 'custom')}, device={describe(device)}")
    source = REPO_ROOT / "notebooks" / f"{chapter}.ipynb"
    code = training_code_hash(source) if source.is_file() else ""
    return ChapterRun(chapter, params, device, code)
