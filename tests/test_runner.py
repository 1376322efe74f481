"""The book runner when it is interrupted (Ctrl-C) or killed (issue 12)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import nbformat

from helpers.book import runner
from helpers.cache import REPO_ROOT

# The driver first restores Python's Ctrl-C handler: a shell that started the tests in the
# background (`make test &`) leaves SIGINT ignored, and a child inherits that, unlike a terminal's
# foreground job, which is what this test stands for.
DRIVER = textwrap.dedent("""
    import signal
    import sys
    from pathlib import Path
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from helpers.book import params, runner
    tmp = Path(sys.argv[1])
    runner.NOTEBOOKS, runner.BOOK = tmp / "notebooks", tmp / "book"
    runner.RESULTS = tmp / "book" / "results"
    runner.FAILED, runner.RUNNING = tmp / "failed", tmp / "running"
    params.PROFILE_DIR = tmp / "notebooks" / "profiles"
    sys.exit(runner.main(["run", "--chapters", "01", "--no-html", "--force"]))
""")


def _fake_book(tmp_path, marker):
    """A one-chapter book whose chapter signals that it runs (``marker``), then sleeps."""
    nbs = tmp_path / "notebooks"
    (nbs / "profiles").mkdir(parents=True)
    (nbs / "profiles" / "01_sleep.yaml").write_text(
        "parameters:\n  seed: {type: int, min: 0}\nprofiles:\n  smoke: {}\n  quick: {}\n  full: "
        "{}\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell("profile = 'quick'\nseed = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(
            f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)"
        ),
    ]
    nbformat.write(nb, nbs / "01_sleep.ipynb")
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "keep.txt").write_text("published\n")
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    return driver


def test_ctrl_c_names_the_chapter_in_one_line_and_leaves_nothing_behind(tmp_path):
    marker = tmp_path / "started"
    driver = _fake_book(tmp_path, marker)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(driver), str(tmp_path)],
        cwd=REPO_ROOT,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 120
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), proc.communicate(timeout=10)
        os.killpg(
            proc.pid, signal.SIGINT
        )  # what Ctrl-C in a terminal does: the whole foreground group
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err
    assert lines == [
        "interrupted: chapter 01_sleep stopped before it finished; book/ is unchanged"
    ], err
    assert sorted(p.name for p in (tmp_path / "book").iterdir()) == ["keep.txt"]
    assert list((tmp_path / "running").iterdir()) == []


def test_folders_of_a_killed_run_are_cleaned_at_the_next_start(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RUNNING", tmp_path / "running")
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = tmp_path / "running" / f"01_shortcut_learning-{proc.pid}-abc123"
    live = tmp_path / "running" / f"02_fisher_regularization-{os.getpid()}-def456"
    for folder in (dead, live):
        (folder / "results").mkdir(parents=True)
        (folder / "results" / "x.json").write_text(json.dumps({}))
    monkeypatch.setattr(runner, "execute", lambda src, profile, force=False: "skipped")
    assert runner.main(["run", "--chapters", "01", "--no-html"]) == 0
    assert not dead.exists() and live.exists()


def test_kernels_import_the_helpers_the_runner_hashed(tmp_path, monkeypatch):
    """The chapter hash covers REPO_ROOT's helpers; a kernel must import those, not an editable
    install's copy from another checkout."""
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    path = runner._kernel_env(tmp_path)["PYTHONPATH"].split(os.pathsep)
    assert path == [str(REPO_ROOT), "/elsewhere"]
