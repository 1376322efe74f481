"""Wall time of chapter 05's grid trained sequentially in one process against a local sweep.

Each variant trains into its own empty cache (sharing the MNIST files), so neither finds a cell
already trained.

    python benchmarks/sweep_smoke.py [--profile smoke] [--workers 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch

from helpers.book import sweep as S
from helpers.cache import ENV_VAR
from helpers.data.mnist import raw_dir
from helpers.hardware import cpu_model


def fresh_cache(parent: Path, name: str) -> Path:
    root = parent / name
    (root / "MNIST").mkdir(parents=True)
    shutil.copytree(raw_dir(), root / "MNIST" / "raw")
    return root


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    os.environ.pop("SHORTCUT_BOOK_RETRAIN", None)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ[ENV_VAR] = str(fresh_cache(tmp, "sequential"))
        run = S.chapter_run("05_rebias", a.profile)
        grid = S.grid_module("05_rebias")
        t0 = time.perf_counter()
        n = 0
        for stage in grid.stages(run):
            for cell in stage(run):
                grid.run_cell(run, cell)
                n += 1
        sequential = time.perf_counter() - t0

        os.environ[ENV_VAR] = str(fresh_cache(tmp, "swept"))
        run = S.chapter_run("05_rebias", a.profile)
        summary = S.sweep(run, S.LocalExecutor(a.workers), log_dir=tmp / "logs", progress=False)
        assert not summary.failed, S.report(summary)
    record = {
        "profile": a.profile,
        "cells": n,
        "cpu_cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads_sequential": torch.get_num_threads(),
        "workers": a.workers,
        "sequential_s": round(sequential, 1),
        "local_sweep_s": summary.seconds,
    }
    print(json.dumps(record))
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
