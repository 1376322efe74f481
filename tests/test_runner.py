"""The book runner when it is interrupted (Ctrl-C) or killed (issue 12)."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

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


def _one_chapter(nbs, stem, code, full="{}"):
    """Write notebook ``stem`` (a parameters cell, then ``code``) and its profile file."""
    (nbs / "profiles").mkdir(parents=True, exist_ok=True)
    (nbs / "profiles" / f"{stem}.yaml").write_text(
        "parameters:\n  seed: {type: int, min: 0}\nprofiles:\n  smoke: {}\n  quick: {}\n"
        f"  full: {full}\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [
        nbformat.v4.new_code_cell("profile = 'quick'\nseed = 0", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(code),
    ]
    nbformat.write(nb, nbs / f"{stem}.ipynb")
    return nbs / f"{stem}.ipynb"


def _fake_book(tmp_path, marker):
    """A one-chapter book whose chapter signals that it runs (``marker``), then sleeps."""
    nbs = tmp_path / "notebooks"
    _one_chapter(
        nbs,
        "01_sleep",
        f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)",
    )
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


def _recording_book(tmp_path, monkeypatch):
    """A one-chapter book whose chapter writes its run record at once; the runner's folders point
    into ``tmp_path``."""
    from helpers.book import params

    nbs = tmp_path / "notebooks"
    src = _one_chapter(
        nbs,
        "01_record",
        "import json, os, pathlib\n"
        "out = pathlib.Path(os.environ['SHORTCUT_BOOK_RESULTS']) / '01_record.json'\n"
        "out.write_text(json.dumps({'profile': profile, 'seeds': [seed]}))",
        full="{seed: 1}",
    )
    monkeypatch.setattr(runner, "NOTEBOOKS", nbs)
    monkeypatch.setattr(runner, "BOOK", tmp_path / "book")
    monkeypatch.setattr(runner, "RESULTS", tmp_path / "book" / "results")
    monkeypatch.setattr(runner, "FAILED", tmp_path / "failed")
    monkeypatch.setattr(runner, "RUNNING", tmp_path / "running")
    monkeypatch.setattr(params, "PROFILE_DIR", nbs / "profiles")
    return src


def test_a_full_run_sits_beside_the_quick_copy(tmp_path, monkeypatch, capsys):
    """Issue 14: --profile full writes book/full/ and book/results/full/, never the quick copy;
    `list` shows both; each profile's hash skip works on its own copy."""
    src = _recording_book(tmp_path, monkeypatch)
    book = tmp_path / "book"
    assert runner.main(["run", "--profile", "quick", "--chapters", "01", "--no-html"]) == 0
    quick_nb = (book / "01_record.ipynb").read_bytes()
    assert json.loads((book / "results" / "01_record.json").read_text())["profile"] == "quick"
    assert [(p, s) for _, p, s in runner.listing()] == [("quick", "current")]

    assert runner.main(["run", "--profile", "full", "--chapters", "01", "--no-html"]) == 0
    full = json.loads((book / "results" / "full" / "01_record.json").read_text())
    assert full == {"profile": "full", "seeds": [1]}
    assert (book / "full" / "01_record.ipynb").is_file()
    # papermill's metadata names the repository's files, not this machine's folders
    paths = nbformat.read(book / "full" / "01_record.ipynb", as_version=4).metadata["papermill"]
    assert (paths["input_path"], paths["output_path"]) == (
        "notebooks/01_record.ipynb",
        "book/full/01_record.ipynb",
    )
    assert (book / "01_record.ipynb").read_bytes() == quick_nb  # untouched
    assert json.loads((book / "results" / "01_record.json").read_text())["profile"] == "quick"
    assert [(p, s) for _, p, s in runner.listing()] == [("quick", "current"), ("full", "current")]
    capsys.readouterr()
    assert runner.main(["list"]) == 0
    assert capsys.readouterr().out.split() == ["01_record", "quick", "current"] + [
        "01_record",
        "full",
        "current",
    ]

    assert runner.execute(src, "full") == "skipped"
    assert runner.execute(src, "quick") == "skipped"
    spec = src.parent / "profiles" / "01_record.yaml"
    spec.write_text(spec.read_text().replace("full: {seed: 1}", "full: {seed: 2}"))
    assert [(p, s) for _, p, s in runner.listing()] == [("quick", "current"), ("full", "stale")]


def test_the_toc_gets_an_appendix_of_full_runs(monkeypatch):
    scratch = REPO_ROOT / "build"
    scratch.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        book = Path(tmp) / "book"
        (book / "full").mkdir(parents=True)
        (book / "full" / "05_rebias.ipynb").write_text("{}")
        monkeypatch.setattr(runner, "BOOK", book)
        toc = runner.book_toc()
    chapters, appendix = toc["parts"]
    files = [c["file"] for c in chapters["chapters"]]
    # front matter (the notation page) first, then the chapters in order
    assert [f for f in files if Path(f).name[:2].isdigit()][0] == "book/01_shortcut_learning"
    assert appendix["chapters"] == [
        {"file": (book / "full" / "05_rebias").relative_to(REPO_ROOT).as_posix()}
    ]
