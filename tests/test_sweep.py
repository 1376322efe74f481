"""``python -m helpers.book sweep`` (issues 17, 30): a chapter's grid fanned out and back in.

The machinery (local worker processes, submitit's Slurm path, a failed cell, resuming) is tested on
a toy grid of the same shape as chapter 05's (``tests/sweep_toy_grid.py``: a stage of candidates,
then a stage that needs the chosen one), whose cells train in milliseconds, so what is timed is the
machinery (mostly the start of worker processes). Chapter 05's own grid is tested where it meets
the chapter: the sweep keys its cells as the chapter does, and a worker trains one bit for bit as
the chapter's process would. (nbval executes the chapter itself at smoke.)"""

import json
import os
import shutil
from pathlib import Path

import nbformat
import papermill as pm
import pytest
import torch
import yaml

from helpers.book import sweep as S
from helpers.book.chapter import ChapterRun
from helpers.book.runner import NOTEBOOKS
from helpers.cache import ENV_VAR, checkpoint_path, read_checkpoint
from helpers.data.mnist import raw_dir
from helpers.methods import rebias_grid as G

CHAPTER = "05_rebias"
TESTS = Path(__file__).parent
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


def _chapters_run(out: Path) -> dict:
    """What the chapter's ``start_chapter`` makes of its smoke profile (validated parameters, code
    hash, device type): the notebook's cells up to that call, executed by papermill as the runner
    executes the chapter, then one cell that writes them to ``out``."""
    nb = nbformat.read(NOTEBOOKS / f"{CHAPTER}.ipynb", as_version=4)
    last = next(
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and "= start_chapter(" in c.source
    )
    dump = (
        f"Path({str(out)!r}).write_text(json.dumps("
        '{"params": run.params, "code": run.code, "device": run.device.type}))'
    )
    nb.cells = nb.cells[: last + 1] + [
        nbformat.v4.new_code_cell(f"import json\nfrom pathlib import Path\n\n{dump}")
    ]
    src = out.with_suffix(".ipynb")
    nbformat.write(nb, src)
    params = yaml.safe_load((NOTEBOOKS / "profiles" / f"{CHAPTER}.yaml").read_text())
    pm.execute_notebook(
        str(src),
        str(src),
        parameters={**params["profiles"]["smoke"], "profile": "smoke"},
        cwd=str(NOTEBOOKS),
        progress_bar=False,
        kernel_name="python3",
    )
    return json.loads(out.read_text())


def test_the_sweep_keys_chapter_05s_cells_as_the_chapter_and_a_worker_trains_them_bit_for_bit(
    cache, monkeypatch, tmp_path
):
    """The sweep's run of chapter 05 at smoke is the one the chapter makes (same parameters, code
    hash and device type, hence the same key for every cell), and a cell trained in a worker
    process has the weights and history of the same cell trained here: so the chapter executed on
    a swept cache loads the cells it would have trained."""
    run = S.chapter_run(CHAPTER, "smoke")
    chapters = _chapters_run(tmp_path / "run.json")
    assert chapters == {
        "params": json.loads(json.dumps(run.params)),
        "code": run.code,
        "device": run.device.type,
    }

    cell = {"method": "vanilla", "rho": run.params["rhos"][0], "seed": run.params["seed"]}
    name, key = f"ch05_{cell['method']}", G.cell_config(run, lam=None, **cell)
    _use(monkeypatch, cache("here"))
    G.train_cell(run, **cell)
    here = read_checkpoint(checkpoint_path(name, key))

    _use(monkeypatch, cache("swept"))
    monkeypatch.setattr(G, "stages", lambda r: [lambda r: [{**cell, "lam": None}]])
    # with this process's thread count the sums run in the same order: identical weights
    ex = S.LocalExecutor(workers=1, threads=torch.get_num_threads())
    summary = S.sweep(run, ex, log_dir=tmp_path / "logs", progress=False)
    assert not summary.failed and summary.ran == 1
    swept = read_checkpoint(checkpoint_path(name, key))
    assert here["state"].keys() == swept["state"].keys()
    for net, state in here["state"].items():
        assert all(torch.equal(t, swept["state"][net][n]) for n, t in state.items()), net
    rows = lambda blob: [  # noqa: E731
        {k: v for k, v in r.items() if k != "time_s"} for r in blob["extra"]["history"]["rows"]
    ]
    assert rows(swept) == rows(here)


# ------------------------------------------------------------------------------ the toy grid
@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Chapter ``toy`` = tests/sweep_toy_grid.py, an empty cache, and a maker of its runs."""
    monkeypatch.setitem(S.GRIDS, "toy", "sweep_toy_grid")
    monkeypatch.syspath_prepend(str(TESTS))  # worker processes start with this sys.path
    # submitit's job processes start with this environment
    path = [str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    _use(monkeypatch, tmp_path / "cache")

    def make(values=(1.0, 2.0), seeds=(0, 1)):
        params = {"device": "cpu", "values": list(values), "seeds": list(seeds), "steps": 3}
        return ChapterRun("toy", params, torch.device("cpu"), "toy-code")

    return make


def toy_grid():
    return S.grid_module("toy")


def _every_cell_done(run) -> bool:
    grid = S.grid_module(run.chapter)
    return all(grid.is_done(run, c) for stage in grid.stages(run) for c in stage(run))


def test_local_workers_run_every_stage_and_a_rerun_submits_nothing(toy, tmp_path, monkeypatch):
    run = toy()
    ex = S.LocalExecutor(workers=2, threads=1)
    summary = S.sweep(run, ex, log_dir=tmp_path / "logs", progress=False)
    # stage 1: 2 candidates; stage 2: the chosen one at 2 seeds, the first of them found in the
    # cache (stage 1 trained it)
    assert not summary.failed and (summary.cells, summary.ran, summary.cached) == (4, 3, 1)
    assert _every_cell_done(run) and len(list((tmp_path / "logs").glob("*.log"))) == 3
    again = S.sweep(run, ex, log_dir=tmp_path / "logs", progress=False)
    assert again.ran == 0 and again.cached == again.cells == 4  # nothing resubmitted

    # a worker trained what this process trains
    cell = toy_grid().selection_cells(run.params)[0]
    swept = toy_grid().train_cell(run, **cell)
    _use(monkeypatch, tmp_path / "here")
    here = toy_grid().train_cell(run, **cell)
    assert swept["from_cache"] and not here["from_cache"] and swept["loss"] == here["loss"]


def test_slurm_path_through_submitits_local_executor(toy, tmp_path):
    pytest.importorskip("submitit")
    run = toy(values=(1.0,))  # each job is a new process: two jobs, one per stage
    ex = S.SlurmExecutor(
        tmp_path / "submitit", cluster="local", partition=None, time_min=10, gpus=0, cpus=1
    )
    summary = S.sweep(run, ex, log_dir=tmp_path / "logs", progress=False)
    assert not summary.failed and (summary.cells, summary.ran, summary.cached) == (3, 2, 1)
    assert _every_cell_done(run)


def test_a_failed_cell_is_reported_the_others_land_and_a_rerun_submits_only_it(toy, tmp_path):
    ex = S.LocalExecutor(workers=1, threads=1)  # the failing cell does not stop its worker
    summary = S.sweep(toy(values=(1.0, -1.0, 2.0)), ex, log_dir=tmp_path / "logs", progress=False)
    assert len(summary.failed) == 1 and summary.ran == 2  # the two good cells landed
    assert summary.stopped_at_stage == 1  # stage 2 needs all of stage 1
    text = S.report(summary)
    assert '"value": -1.0' in text and "value must be >= 0, got -1.0" in text and "log:" in text

    rerun = S.sweep(toy(), ex, log_dir=tmp_path / "logs", progress=False)
    # the finished cells were kept, not rerun: only stage 2's second seed trains
    assert not rerun.failed and (rerun.cells, rerun.cached, rerun.ran) == (4, 3, 1)


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


def test_the_full_grid_is_the_papers_48_cells_and_the_fix_variants():
    """Chapter 05 at full: 4 ρ × 4 trained methods × 3 seeds, the paper's grid the sweep fans out,
    and the book's fixed RUBi / LearnedMixin+H (extra layers trained) beside it: 4 ρ × 2 × 3."""
    from collections import Counter

    from helpers.methods import rebias_grid as G

    run = S.chapter_run("05_rebias", "full")
    cells = G.grid_cells(run.params, 1.0)
    assert len(cells) == 72
    assert Counter(c["method"] for c in cells) == dict.fromkeys(
        ("vanilla", "rebias", "rubi", "learned_mixin", "rubi_fix", "learned_mixin_fix"), 12
    )
    assert sorted({c["rho"] for c in cells}) == [0.99, 0.995, 0.997, 0.999]
    assert len({(c["method"], c["rho"], c["seed"]) for c in cells}) == 72
    assert G.selection_cells(run.params) == []  # λ = 1 as published: nothing to choose


def test_the_command_line_builds_a_local_executor_with_its_threads(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    args = parser.parse_args(["--chapters", "02", "--workers", "1", "--threads", "1"])
    ex = S.make_executor(args, tmp_path)
    assert (ex.workers, ex.threads) == (1, 1)
    default = S.make_executor(parser.parse_args(["--chapters", "02", "--workers", "1"]), tmp_path)
    assert default.threads >= 1


def test_a_local_worker_stops_when_its_sweep_is_killed(tmp_path):
    """A killed sweep left its worker training for half an hour: workers watch their parent."""
    import signal
    import subprocess
    import sys
    import time

    pid_file = tmp_path / "child.pid"
    parent_code = f"""
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", '''
import os, time
from helpers.book.sweep import exit_with_parent
exit_with_parent(os.getppid(), interval=0.2)
open({str(pid_file)!r}, "w").write(str(os.getpid()))
time.sleep(60)
'''])
time.sleep(60)
"""
    parent = subprocess.Popen([sys.executable, "-c", parent_code], cwd=S.REPO_ROOT)
    deadline = time.time() + 30
    while not pid_file.is_file() or not pid_file.read_text():
        assert time.time() < deadline, "the child never started"
        time.sleep(0.1)
    child = int(pid_file.read_text())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(child, signal.SIGKILL)
    raise AssertionError("the worker outlived its sweep")
