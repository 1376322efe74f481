"""Wall time of chapter 05's grid trained sequentially in one process against a sweep (local
worker processes, or a running Ray cluster), and whether the two give the same cells.

Each variant trains into its own empty cache (sharing the MNIST files), so neither finds a cell
already trained. Afterwards every cell is loaded back from both caches and compared: test
accuracies and every logged value but the epoch's wall time.

    python benchmarks/sweep_smoke.py [--profile smoke] [--workers 2] [--json out.json]
    python benchmarks/sweep_smoke.py --executor ray [--threads 2]   # after `ray start --head`
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


def cells(grid, cache: Path, profile: str) -> dict:
    """Every cell of the grid, loaded from ``cache``: {cell: (test metrics, history)}."""
    os.environ[ENV_VAR] = str(cache)
    run = S.chapter_run("05_rebias", profile)
    out = {}
    for stage in grid.stages(run):
        for cell in stage(run):
            result = grid.train_cell(run, **cell, progress=False)
            assert result.from_cache, f"{cell} is not in {cache}"
            out[tuple(sorted(cell.items()))] = (result.test, result.history.drop(columns="time_s"))
    return out


def compare(grid, a: Path, b: Path, profile: str) -> dict[str, float]:
    """The largest absolute difference between the two caches' cells: test accuracies, and the
    logged values (accuracies, losses, HSIC) of every epoch."""
    one, two = cells(grid, a, profile), cells(grid, b, profile)
    assert one.keys() == two.keys()
    test = max(abs(one[k][0][m] - two[k][0][m]) for k in one for m in one[k][0])
    logged = max(float((one[k][1] - two[k][1]).abs().max().max()) for k in one)
    return {"test_metrics": test, "logged_values": logged}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=None, help="torch threads per cell")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
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
        executor = (
            S.LocalExecutor(a.workers, a.threads)
            if a.executor == "local"
            else S.RayExecutor(None, gpus=0, cpus=a.threads or 2)
        )
        summary = S.sweep(run, executor, log_dir=tmp / "logs", progress=False)
        assert not summary.failed, S.report(summary)
        differences = compare(grid, tmp / "sequential", tmp / "swept", a.profile)
    record = {
        "profile": a.profile,
        "cells": n,
        "cpu_cores": os.cpu_count(),
        "cpu_model": cpu_model(),
        "torch_threads_sequential": torch.get_num_threads(),
        "executor": a.executor,
        "workers": a.workers if a.executor == "local" else None,
        "threads_per_cell": a.threads,
        "sequential_s": round(sequential, 1),
        "sweep_s": summary.seconds,
        "max_abs_difference": differences,
    }
    print(json.dumps(record))
    if a.json:
        Path(a.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
