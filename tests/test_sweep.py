"""``python -m helpers.book sweep`` (issue 17): chapter 05's smoke grid fanned out and back in.

The sweep trains every cell into a cache; the chapter executed on that cache then loads every cell
and its metrics equal those of a plain sequential execution of the chapter."""

import json
import os
import shutil
from pathlib import Path

import papermill as pm
import pytest
import torch
import yaml

from helpers.book import sweep as S
from helpers.book.runner import NOTEBOOKS
from helpers.cache import ENV_VAR
from helpers.data.mnist import raw_dir

CHAPTER = "05_rebias"
pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path, monkeypatch, mnist):
    """An empty checkpoint cache that shares the verified MNIST files."""

    def make(name):
        root = tmp_path / name
        (root / "MNIST").mkdir(parents=True)
        shutil.copytree(raw_dir(), root / "MNIST" / "raw")
        return root

    return make


def _use(monkeypatch, root: Path):
    monkeypatch.delenv(
        "SHORTCUT_BOOK_RETRAIN", raising=False
    )  # make test sets it; the cache is the point here
    monkeypatch.setenv(ENV_VAR, str(root))
    monkeypatch.setenv("SHORTCUT_BOOK_RESULTS", str(root / "results"))


def _execute_chapter(root: Path, out: Path) -> dict:
    params = yaml.safe_load((NOTEBOOKS / "profiles" / f"{CHAPTER}.yaml").read_text())
    params = {**params["profiles"]["smoke"], "profile": "smoke"}
    pm.execute_notebook(
        str(NOTEBOOKS / f"{CHAPTER}.ipynb"),
        str(out),
        parameters=params,
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        kernel_name="python3",
    )
    return json.loads((root / "results" / f"{CHAPTER}.json").read_text())["metrics"]


def _flat(tree, prefix=""):
    """Leaves of a metrics tree by path, without the cache counters."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            if k not in ("cells_loaded_from_cache", "cells_trained"):
                out.update(_flat(v, f"{prefix}/{k}"))
        return out
    return {prefix: tree}


def test_local_sweep_then_chapter_equals_sequential(cache, monkeypatch, tmp_path):
    seq = cache("sequential")
    _use(monkeypatch, seq)
    sequential = _execute_chapter(seq, tmp_path / "seq.ipynb")
    assert sequential["cells_trained"] > 0

    swept = cache("swept")
    _use(monkeypatch, swept)
    run = S.chapter_run(CHAPTER, "smoke")
    executor = S.LocalExecutor(workers=2, threads=torch.get_num_threads())
    summary = S.sweep(run, executor, log_dir=swept / "logs", progress=False)
    # the chosen λ's selection cell reappears in stage 2 and is found in the cache there
    assert not summary.failed and summary.ran > 0 and summary.ran + summary.cached == summary.cells
    again = S.sweep(run, executor, log_dir=swept / "logs", progress=False)
    assert again.ran == 0 and again.cached == again.cells == summary.cells  # nothing resubmitted

    after = _execute_chapter(swept, tmp_path / "after.ipynb")
    assert after["cells_trained"] == 0 and after["cells_loaded_from_cache"] > 0
    # with the sequential run's thread count the sums run in the same order: identical metrics
    assert _flat(after) == _flat(sequential)


def test_slurm_path_through_submitits_local_executor(cache, monkeypatch):
    pytest.importorskip("submitit")
    root = cache("slurm")
    _use(monkeypatch, root)
    run = S.chapter_run(CHAPTER, "smoke")
    ex = S.SlurmExecutor(
        root / "submitit", cluster="local", partition=None, time_min=10, gpus=0, cpus=1
    )
    summary = S.sweep(run, ex, log_dir=root / "logs", progress=False)
    assert not summary.failed and summary.ran > 0 and summary.ran + summary.cached == summary.cells
    grid = S.grid_module(CHAPTER)
    assert all(grid.is_done(run, c) for stage in grid.stages(run) for c in stage(run))


def test_a_failed_cell_is_reported_the_others_land_and_a_rerun_submits_only_it(cache, monkeypatch):
    root = cache("failing")
    _use(monkeypatch, root)
    run = S.chapter_run(CHAPTER, "smoke")
    grid = S.grid_module(CHAPTER)
    real_stages = grid.stages
    bad = {"method": "rebias", "rho": 0.997, "seed": 0, "lam": -1.0}  # refused by the worker
    monkeypatch.setattr(
        grid, "stages", lambda r: [lambda r: grid.selection_cells(r.params) + [bad]]
    )
    ex = S.LocalExecutor(workers=2)
    summary = S.sweep(run, ex, log_dir=root / "logs", progress=False)
    assert len(summary.failed) == 1 and summary.ran == 2  # the two good cells landed
    text = S.report(summary)
    assert '"lam": -1.0' in text and "lambda_f must be a number >= 0" in text and "log:" in text

    monkeypatch.setattr(grid, "stages", real_stages)
    rerun = S.sweep(run, ex, log_dir=root / "logs", progress=False)
    assert not rerun.failed and rerun.cached >= 2  # the finished cells were kept, not rerun
    assert rerun.ran == rerun.cells - rerun.cached and rerun.ran > 0


def test_a_chapter_without_a_grid_and_a_missing_ray_are_clear_errors(capsys):
    from helpers.book.runner import main

    assert main(["sweep", "--chapters", "01", "--profile", "smoke"]) == 2
    assert "no sweepable grid" in capsys.readouterr().err
    if not os.environ.get("RAY_ADDRESS"):
        try:
            import ray  # noqa: F401
        except ImportError:
            assert (
                main(["sweep", "--chapters", "05", "--profile", "smoke", "--executor", "ray"]) == 2
            )
            assert "pip install '.[ray]'" in capsys.readouterr().err


def test_the_full_grid_is_the_papers_48_cells():
    """Chapter 05 at full: 4 ρ × 4 trained methods × 3 seeds, the grid the sweep fans out."""
    from collections import Counter

    from helpers.methods import rebias_grid as G

    run = S.chapter_run("05_rebias", "full")
    cells = G.grid_cells(run.params, 1.0)
    assert len(cells) == 48
    assert Counter(c["method"] for c in cells) == dict.fromkeys(
        ("vanilla", "rebias", "rubi", "learned_mixin"), 12
    )
    assert sorted({c["rho"] for c in cells}) == [0.99, 0.995, 0.997, 0.999]
    assert len({(c["method"], c["rho"], c["seed"]) for c in cells}) == 48
