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


def _one_chapter(nbs, stem, code, full="{}", reads_records=False):
    """Write notebook ``stem`` (a parameters cell, then ``code``) and its profile file."""
    (nbs / "profiles").mkdir(parents=True, exist_ok=True)
    (nbs / "profiles" / f"{stem}.yaml").write_text(
        "parameters:\n  seed: {type: int, min: 0, max: 100}\nprofiles:\n  smoke: {}\n"
        f"  quick: {{}}\n  full: {full}\n"
    )
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    if reads_records:
        nb.metadata["shortcut_book"] = {"reads_records": reads_records}
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


# --------------------------------------------------------------- issue 29: faults around the runner
def _fake_papermill(monkeypatch):
    """Replace papermill's execution by a copy of the source notebook and a run record written
    where the kernel would write it; returns the list of calls (with the cache path the kernel
    would see)."""
    import papermill

    calls = []

    def execute_notebook(src, out, parameters=None, **kwargs):
        calls.append({"data": os.environ.get("SHORTCUT_BOOK_DATA"), "cwd": kwargs.get("cwd")})
        nbformat.write(nbformat.read(src, as_version=4), out)
        stem = Path(src).stem
        record = {"profile": parameters["profile"], "seeds": [len(calls)]}
        results = Path(os.environ["SHORTCUT_BOOK_RESULTS"])
        (results / f"{stem}.json").write_text(json.dumps(record))

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    return calls


def _published_book(tmp_path, monkeypatch):
    """A one-chapter book (fake kernel) with its quick copy already published."""
    _recording_book(tmp_path, monkeypatch)
    calls = _fake_papermill(monkeypatch)
    assert runner.main(["run", "--chapters", "01", "--no-html"]) == 0
    book = tmp_path / "book"
    nb, rec = book / "01_record.ipynb", book / "results" / "01_record.json"
    return calls, nb, rec


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_a_full_disk_in_book_leaves_the_published_notebook_and_record_unchanged(
    tmp_path, monkeypatch, capsys
):
    """Item 1: book/ on another file system than build/, and the disk fills while the new copy
    goes in: the old notebook was left truncated while the new record was already in place.
    Simulated: a rename from build/ into book/ fails with EXDEV (another file system), and a copy
    into book/ writes part of the file and fails with ENOSPC."""
    import errno
    import shutil

    calls, nb, rec = _published_book(tmp_path, monkeypatch)
    book = tmp_path / "book"
    before = {p: p.read_bytes() for p in (nb, rec)}
    listing = _files(book)
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        if Path(src).is_relative_to(runner.RUNNING) and Path(dst).is_relative_to(book):
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV), str(src), None, str(dst))
        return real_rename(src, dst, *a, **k)

    def copyfile(src, dst, *a, **k):
        data = Path(src).read_bytes()
        with open(dst, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(shutil, "copyfile", copyfile)
    capsys.readouterr()
    assert runner.main(["run", "--chapters", "01", "--no-html", "--force"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "01_record" in err and "unchanged" in err, err
    assert len(calls) == 2  # it ran, and failed only when publishing
    assert {p: p.read_bytes() for p in (nb, rec)} == before
    assert _files(book) == listing  # no temporary file left behind


def test_a_failed_second_rename_puts_the_first_file_back(tmp_path, monkeypatch, capsys):
    """Item 1: notebook and record are published together or not at all; the record goes first,
    so when the notebook's rename fails the record is rolled back."""
    import errno

    calls, nb, rec = _published_book(tmp_path, monkeypatch)
    before = {p: p.read_bytes() for p in (nb, rec)}
    listing = _files(tmp_path / "book")
    real_replace = os.replace

    def replace(src, dst, *a, **k):
        if Path(dst) == nb and not Path(src).name.startswith(".01_record.ipynb.old."):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    capsys.readouterr()
    assert runner.main(["run", "--chapters", "01", "--no-html", "--force"]) == 2
    assert "cannot replace" in capsys.readouterr().err
    assert len(calls) == 2
    assert {p: p.read_bytes() for p in (nb, rec)} == before
    assert _files(tmp_path / "book") == listing


def test_a_read_only_book_is_refused_before_the_chapter_runs(tmp_path, monkeypatch, capsys):
    """Item 7: a read-only book/ gave a raw shutil.move traceback after the whole chapter ran.
    Simulated (the tests may run as root, who can write a chmod-ed folder): every way of creating
    or replacing a file under book/ fails with EROFS."""
    import errno
    import shutil

    calls, nb, rec = _published_book(tmp_path, monkeypatch)
    book = tmp_path / "book"

    def read_only(real):
        def call(*args, **kwargs):
            if any(isinstance(a, (str, Path)) and Path(a).is_relative_to(book) for a in args[:2]):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(args[0]))
            return real(*args, **kwargs)

        return call

    for name in ("open", "rename", "replace", "link", "mkdir"):
        monkeypatch.setattr(os, name, read_only(getattr(os, name)))
    monkeypatch.setattr(shutil, "copyfile", read_only(shutil.copyfile))
    capsys.readouterr()
    assert runner.main(["run", "--chapters", "01", "--no-html", "--force"]) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and str(book) in err and "nothing was run" in err, err
    assert len(calls) == 1  # only the first, publishing run


def test_a_corrupt_executed_notebook_is_named_and_executed_again(tmp_path, monkeypatch, capsys):
    """Item 8: ``truncate -s 20000 book/03_….ipynb`` made `list` and `run` crash with NotJSONError
    naming no file."""
    calls, nb, rec = _published_book(tmp_path, monkeypatch)
    nb.write_bytes(nb.read_bytes()[:40])
    ((_, profile, state),) = runner.listing()
    assert (
        state.startswith("unreadable: ") and str(nb) in state and "not a readable notebook" in state
    )
    capsys.readouterr()
    assert runner.main(["list"]) == 0
    assert str(nb) in capsys.readouterr().out
    assert runner.main(["run", "--chapters", "01", "--no-html"]) == 0  # no --force
    assert "executing the chapter again" in capsys.readouterr().out
    assert len(calls) == 2 and [s for _, _, s in runner.listing()] == ["current"]


def test_an_unreadable_record_is_not_current_and_is_executed_again(tmp_path, monkeypatch, capsys):
    """Item 14: `list` called a chapter "current" when its record could not be read."""
    calls, nb, rec = _published_book(tmp_path, monkeypatch)
    for content in ("{truncated", "[1, 2]", '{"metrics": {"acc": NaN}}'):
        rec.write_text(content)
        ((_, _, state),) = runner.listing()
        assert state.startswith("unreadable: ") and str(rec) in state, state
    assert runner.main(["run", "--chapters", "01", "--no-html"]) == 0
    assert len(calls) == 2 and json.loads(rec.read_text())["seeds"] == [2]
    assert [s for _, _, s in runner.listing()] == ["current"]


def test_a_directory_where_a_record_or_notebook_belongs_is_named(tmp_path, monkeypatch, capsys):
    """Item 9: a directory ``book/results/08_dir.json`` made `list` and `run` crash with
    IsADirectoryError (the scorecard chapter reads every record)."""
    _recording_book(tmp_path, monkeypatch)
    calls = _fake_papermill(monkeypatch)
    _one_chapter(tmp_path / "notebooks", "02_reader", "pass", reads_records=True)
    assert runner.main(["run", "--chapters", "01", "02", "--no-html"]) == 0
    stray = tmp_path / "book" / "results" / "08_dir.json"
    stray.mkdir()
    states = {src.stem: state for src, _, state in runner.listing()}
    assert states["01_record"] == "current"
    assert states["02_reader"].startswith("unreadable: ") and str(stray) in states["02_reader"]
    capsys.readouterr()
    assert runner.main(["list"]) == 0
    assert str(stray) in capsys.readouterr().out
    assert runner.main(["run", "--chapters", "01", "02", "--no-html", "--force"]) == 2
    err = capsys.readouterr().err
    assert str(stray) in err and "nothing was run" in err, err
    assert len(calls) == 2
    stray.rmdir()
    (tmp_path / "book" / "01_record.ipynb").unlink()
    (tmp_path / "book" / "01_record.ipynb").mkdir()  # a directory where a notebook belongs
    assert runner.main(["run", "--chapters", "01", "--no-html"]) == 2
    assert "01_record.ipynb is a directory" in capsys.readouterr().err and len(calls) == 2
    ((_, _, state), _) = runner.listing()
    assert state.startswith("unreadable: ") and "01_record.ipynb is a directory" in state


def test_a_cache_path_that_is_a_file_is_named_by_run_and_sweep(tmp_path, monkeypatch, capsys):
    """Item 10: ``SHORTCUT_BOOK_DATA`` pointing at a regular file: `run` named it, `sweep` printed a
    traceback. Both now stop with one line, before anything runs."""
    _recording_book(tmp_path, monkeypatch)
    calls = _fake_papermill(monkeypatch)
    not_a_folder = tmp_path / "data.bin"
    not_a_folder.write_text("x")
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(not_a_folder))
    capsys.readouterr()
    for argv in (
        ["run", "--chapters", "01", "--no-html"],
        ["sweep", "--chapters", "05", "--profile", "smoke"],
    ):
        assert runner.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: $SHORTCUT_BOOK_DATA") and str(not_a_folder) in err, err
        assert "is not a directory" in err and "Traceback" not in err
    assert calls == []


def test_a_relative_cache_path_is_resolved_against_the_callers_directory(tmp_path, monkeypatch):
    """Item 13: ``SHORTCUT_BOOK_DATA=relcache`` was read by the kernel in notebooks/, which then
    rebuilt MNIST and retrained into notebooks/relcache/."""
    _recording_book(tmp_path, monkeypatch)
    calls = _fake_papermill(monkeypatch)
    caller = tmp_path / "caller"
    (caller / "relcache").mkdir(parents=True)
    monkeypatch.chdir(caller)
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", "relcache")
    assert runner.main(["run", "--chapters", "01", "--no-html"]) == 0
    assert calls[0]["data"] == str(caller / "relcache")
    assert calls[0]["cwd"] == str(runner.NOTEBOOKS)  # the kernel's directory is not the caller's


def test_a_chapter_that_reads_named_records_follows_only_those(tmp_path, monkeypatch):
    """Chapter 08 reads chapters 01's and 05's records: it is stale when one of those changes,
    not when another chapter's (the scorecard's, which reads every record) does."""
    _recording_book(tmp_path, monkeypatch)
    _fake_papermill(monkeypatch)
    nbs = tmp_path / "notebooks"
    _one_chapter(nbs, "01_record", "pass")
    _one_chapter(nbs, "02_other", "pass")
    _one_chapter(nbs, "03_reader", "pass", reads_records=["01_record"])
    assert runner.main(["run", "--no-html"]) == 0
    states = lambda: {src.stem: state for src, _, state in runner.listing()}  # noqa: E731
    assert set(states().values()) == {"current"}
    other = tmp_path / "book" / "results" / "02_other.json"
    other.write_text(other.read_text().replace('"seeds"', '"seeds" ', 1))
    assert states()["03_reader"] == "current"
    read = tmp_path / "book" / "results" / "01_record.json"
    read.write_text(read.read_text().replace('"seeds"', '"seeds" ', 1))
    assert states()["03_reader"] == "stale"


def test_a_full_profile_page_shows_the_values_it_ran_with(tmp_path):
    """Issue 31 item 6: the full copy's parameters cell showed the quick defaults; the injected
    cell with the full values stays visible there, under a note, and is removed on quick pages."""
    for profile, shown in (("full", True), ("quick", False)):
        nb = nbformat.v4.new_notebook()
        nb.cells = [
            nbformat.v4.new_code_cell("epochs = 2", metadata={"tags": ["parameters"]}),
            nbformat.v4.new_code_cell("epochs = 50", metadata={"tags": ["injected-parameters"]}),
            nbformat.v4.new_code_cell("print(epochs)"),
        ]
        path = tmp_path / f"{profile}.ipynb"
        nbformat.write(nb, path)
        src = runner.NOTEBOOKS / "01_x.ipynb"
        runner._finalise(path, "abc", profile, src, runner.BOOK / "01_x.ipynb")
        cells = nbformat.read(path, as_version=4).cells
        injected = next(c for c in cells if "injected-parameters" in c.metadata["tags"])
        assert ("remove-cell" not in injected.metadata["tags"]) == shown
        notes = [c for c in cells if c.cell_type == "markdown"]
        assert len(notes) == int(shown)
        if shown:
            assert cells.index(notes[0]) == cells.index(injected) - 1
            assert "`full` profile's values" in notes[0].source


def test_a_full_copy_links_to_the_pages_one_folder_up():
    """book/full/06_caml.ipynb links to ../08_benchmark.ipynb, in Markdown cells and in the Markdown
    a cell displayed; web addresses, anchors and other files are left alone."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_markdown_cell(
            "See [chapter 8](08_benchmark.ipynb), [ρ](notation.md#glossary-rho), "
            "[the intro](intro.md), [a paper](https://x.org/01_a.ipynb) and [a file](data.csv)."
        ),
        nbformat.v4.new_code_cell("show()"),
    ]
    nb.cells[1].outputs = [
        nbformat.v4.new_output(
            "display_data", data={"text/markdown": "as [chapter 1](01_shortcut_learning.ipynb) did"}
        )
    ]
    assert runner.relink_to_book_folder(nb) == 4
    assert nb.cells[0].source == (
        "See [chapter 8](../08_benchmark.ipynb), [ρ](../notation.md#glossary-rho), "
        "[the intro](../intro.md), [a paper](https://x.org/01_a.ipynb) and [a file](data.csv)."
    )
    assert nb.cells[1].outputs[0]["data"]["text/markdown"] == (
        "as [chapter 1](../01_shortcut_learning.ipynb) did"
    )
    assert runner.relink_to_book_folder(nb) == 0  # already pointing one folder up
