"""The book runner: execute chapters with papermill into ``book/``, then render the HTML with
Jupyter Book.

    python -m helpers.book run [--profile quick] [--chapters 01 03] [--force] [--no-html]
    python -m helpers.book prepare --profile smoke --out build/nbval  # parameterised copies (nbval)
    python -m helpers.book html                                        # render book/ to _build/html
    python -m helpers.book list                                        # the chapters, their state

For each chapter the runner validates the profile's parameters against the chapter's schema (before
anything runs), skips the chapter when the hash of its source, its parameters and the ``helpers``
package matches the hash stored in the executed copy, and otherwise executes it into a temporary
file. On success the executed copy is moved into ``book/`` with papermill's injected-parameters cell
tagged ``remove-cell`` (hidden in the HTML, kept for provenance) and the chapter's results record
into ``book/results/``. On failure the run stops, names the chapter and the failing cell, and keeps
the partial notebook in ``build/failed/``. A chapter runs in
``build/running/<chapter>-<pid>-<random>/``; Ctrl-C prints one line naming the chapter and removes
that folder (book/ is unchanged), and folders left by a killed runner are removed when the next one
starts.

Publishing is all or nothing: before any chapter runs, the runner checks that every target folder in
``book/`` can be written (and that no directory sits where a file belongs). After a chapter ran, its
record and notebook are first copied into temporary files beside their targets (same file system:
a full disk stops here, and book/ is unchanged), then renamed over them, record first; if a rename
fails, the file already replaced gets its previous content back. An executed copy or record that
cannot be read is reported by ``list`` (naming the file) and re-executed by ``run``. A relative
``$SHORTCUT_BOOK_DATA`` is resolved once against the caller's directory and passed on as an
absolute path (the kernels run in ``notebooks/``).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat
import yaml

from helpers.book.closure import code_hash
from helpers.book.layout import APPENDIX_PROFILE, MAIN_PROFILE, profile_folder
from helpers.book.params import PROFILES, ParameterError, profile_values
from helpers.book.scorecard import record_files
from helpers.cache import (
    ENV_VAR,
    REPO_ROOT,
    CacheError,
    cache_root,
    clean_stale_temp_files,
    pid_alive,
    shown_path,
)

NOTEBOOKS = REPO_ROOT / "notebooks"
BOOK = REPO_ROOT / "book"
RESULTS = BOOK / "results"
FAILED = REPO_ROOT / "build" / "failed"
# <chapter>-<pid>-<random>/: a chapter's execution folder while it runs
RUNNING = REPO_ROOT / "build" / "running"
META_KEY = "shortcut_book"
KERNEL = "python3"


class ChapterFailed(RuntimeError):
    pass


class BookError(RuntimeError):
    """book/ cannot take a chapter's copy, or holds something where a file belongs; the message
    names the path."""


def clean_stale_runs() -> list[Path]:
    """Delete the execution folders that a killed runner (SIGKILL, power loss) left behind: their
    PID is gone."""
    removed = []
    for folder in RUNNING.glob("*-*-*"):
        pid = folder.name.rsplit("-", 2)[1]
        if folder.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def chapters(selection: list[str] | None = None) -> list[Path]:
    """Source notebooks in order; ``selection`` entries match a chapter's number or full stem."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not selection:
        return found
    chosen = []
    for sel in selection:
        hits = [p for p in found if p.stem == sel or p.stem.split("_", 1)[0] == sel]
        if not hits:
            raise SystemExit(
                f"error: unknown chapter {sel!r} (chapters: {', '.join(p.stem for p in found)})"
            )
        chosen += [h for h in hits if h not in chosen]
    return chosen


def source_hash(src: Path, params: dict) -> str:
    """What an executed copy depends on: the cells' sources, the parameters and the helpers modules
    it uses; for a chapter that reads the other chapters' run records (notebook metadata
    ``shortcut_book.reads_records``: true for every record, as the scorecard, or a list of chapter
    stems), those records too."""
    nb = nbformat.read(src, as_version=4)
    h = hashlib.sha256()
    for cell in nb.cells:
        h.update(cell.cell_type.encode())
        h.update(cell.source.encode())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(code_hash(src).encode())
    reads = nb.metadata.get(META_KEY, {}).get("reads_records")
    if reads:
        # True: every record (the scorecard); a list: those chapters' records only, so that two
        # readers never make each other stale
        for record in record_files(RESULTS):  # quick and full, never the scorecard's own
            if reads is True or record.stem in reads:
                h.update(record.relative_to(RESULTS).as_posix().encode())
                h.update(_read_bytes(record, "a run record"))
    return h.hexdigest()


def executed_path(src: Path, profile: str = MAIN_PROFILE) -> Path:
    """book/<chapter>.ipynb for quick, book/<profile>/<chapter>.ipynb otherwise."""
    return profile_folder(BOOK, profile) / src.name


def results_path(stem: str, profile: str = MAIN_PROFILE) -> Path:
    """The run record: book/results/<stem>.json for quick, book/results/<profile>/<stem>.json
    otherwise."""
    return profile_folder(RESULTS, profile) / f"{stem}.json"


def _read_bytes(path: Path, what: str) -> bytes:
    """The bytes of ``path``; a directory or an unreadable file there is a :class:`BookError`."""
    if path.is_dir():
        raise BookError(f"{shown_path(path)} is a directory where {what} belongs: remove it")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BookError(f"{shown_path(path)}: cannot read {what} ({exc.strerror or exc})") from None


def stored_hash(path: Path) -> str | None:
    """The source hash stored in an executed copy; None when there is none or it cannot be read
    (:func:`copy_problem` says why)."""
    if not path.is_file():
        return None
    try:
        return nbformat.read(path, as_version=4).metadata.get(META_KEY, {}).get("hash")
    except Exception:  # noqa: BLE001 - truncated or foreign files: the copy is stale, not the run's end
        return None


def copy_problem(src: Path, profile: str) -> str | None:
    """Why the published notebook and record of ``src`` at ``profile`` cannot be trusted (named,
    with the file), or None: a directory where a file belongs, a notebook that is not one, a record
    that is not a JSON object with finite numbers."""
    out, record = executed_path(src, profile), results_path(src.stem, profile)
    for path, what in ((out, "an executed notebook"), (record, "a run record")):
        if path.is_dir():
            return f"{shown_path(path)} is a directory where {what} belongs"
    if out.is_file():
        try:
            nbformat.read(out, as_version=4)
        except Exception as exc:  # noqa: BLE001 - NotJSONError, validation errors, OSError, ...
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            return f"{shown_path(out)} is not a readable notebook ({type(exc).__name__}: {reason})"
    if record.is_file():
        problem = record_problem(record)
        if problem:
            return problem
    return None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def record_problem(path: Path) -> str | None:
    """Why the run record at ``path`` cannot be read, naming it; None for a readable record (a JSON
    object without NaN or infinities)."""
    try:
        record = json.loads(path.read_text(), parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        return f"{shown_path(path)} is not a readable run record ({type(exc).__name__}: {reason})"
    if not isinstance(record, dict):
        return f"{shown_path(path)} is not a run record (a JSON {type(record).__name__})"
    return None


def without_machine_paths(nb: nbformat.NotebookNode, src: Path, out: Path) -> None:
    """Replace papermill's absolute input/output paths (this machine's folders, and the temporary
    execution folder) by the repository-relative source and executed copy."""
    meta = nb.metadata.get("papermill")
    if meta is not None:
        meta["input_path"] = src.relative_to(NOTEBOOKS.parent).as_posix()
        meta["output_path"] = out.relative_to(BOOK.parent).as_posix()


# a Markdown link to another page of the book's folder: a chapter notebook or a front-matter page
_SIBLING_LINK = re.compile(r"\]\((?=(?:\d{2}_\w+\.ipynb|intro\.md|notation\.md)(?:[#)]))")


def relink_to_book_folder(nb: nbformat.NotebookNode) -> int:
    """Point the links of a copy that lives one folder below ``book/`` (``book/full/``) at the
    pages in ``book/``: ``[chapter 8](08_benchmark.ipynb)`` becomes ``(../08_benchmark.ipynb)``,
    in Markdown cells and in the Markdown a cell displayed. Returns the number of links changed."""
    changed = 0

    def fix(text: str) -> str:
        nonlocal changed
        new, n = _SIBLING_LINK.subn("](../", text)
        changed += n
        return new

    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = fix(cell.source)
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if isinstance(data.get("text/markdown"), str):
                data["text/markdown"] = fix(data["text/markdown"])
    return changed


def _finalise(nb_path: Path, digest: str, profile: str, src: Path, out: Path) -> None:
    """Hide papermill's injected cell (show it, with a note, on a page of another profile than
    the quick one), record the source hash, drop per-run kernel noise and the
    machine's paths."""
    nb = nbformat.read(nb_path, as_version=4)
    for cell in list(nb.cells):
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" not in tags or "remove-cell" in tags:
            continue
        if profile == MAIN_PROFILE:  # the parameters cell above already shows these values
            cell.metadata["tags"] = tags + ["remove-cell"]
        else:  # the reader of a full-profile page sees the values this run used, under the defaults
            note = nbformat.v4.new_markdown_cell(
                f"The `{profile}` profile's values, which the book's runner set after the "
                "parameters cell above (they replace the values shown there):"
            )
            note.metadata["tags"] = ["profile-parameters-note"]
            nb.cells.insert(nb.cells.index(cell), note)
    if profile != MAIN_PROFILE:  # the copy lives in book/<profile>/
        relink_to_book_folder(nb)
    nb.metadata[META_KEY] = {"hash": digest, "profile": profile}
    nb.metadata.pop("widgets", None)
    without_machine_paths(nb, src, out)
    nbformat.write(nb, nb_path)


def _kernel_env(results_dir: Path) -> dict:
    env = dict(os.environ)
    env["SHORTCUT_BOOK_RESULTS"] = str(results_dir)
    # widget progress bars cannot be rendered in the static book
    env.setdefault("TQDM_DISABLE", "1")
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    # the kernel imports the helpers this runner hashed (REPO_ROOT's), not whichever copy an
    # editable install or the notebooks' folder would put first on its path
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return env


def _describe_failure(exc: Exception, partial: Path) -> str:
    cell = "unknown cell"
    try:
        nb = nbformat.read(partial, as_version=4)
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code" and any(
                o.get("output_type") == "error" for o in c.get("outputs", [])
            ):
                first = c.source.strip().splitlines()[0] if c.source.strip() else ""
                cell = f"cell {i} (execution count {c.get('execution_count')}): {first[:80]!r}"
                break
    except Exception:  # noqa: BLE001 - the partial may be unreadable; the message still names the chapter
        pass
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    return f"{cell}: {ename}: {evalue}"


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Point file descriptor 2 at ``path`` while a chapter runs: the kernel inherits it, so its
    warnings and the tracebacks it prints when the runner stops it (Ctrl-C) go to this log instead
    of the terminal."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def execute(src: Path, profile: str, *, force: bool = False) -> str:
    """Execute one chapter into book/; returns 'executed' or 'skipped'."""
    import papermill as pm

    params = profile_values(src.stem, profile)
    digest = source_hash(src, params)
    out, record_out = executed_path(src, profile), results_path(src.stem, profile)
    problem = copy_problem(src, profile)
    if problem:
        print(f"{problem}: executing the chapter again", flush=True)
    elif not force and stored_hash(out) == digest and record_out.is_file():
        return "skipped"
    RUNNING.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"{src.stem}-{os.getpid()}-", dir=RUNNING) as tmp:
        tmp_nb, tmp_results = Path(tmp) / src.name, Path(tmp) / "results"
        tmp_results.mkdir()
        old_env = dict(os.environ)
        os.environ.update(_kernel_env(tmp_results))
        kernel_log = Path(tmp) / "kernel-stderr.log"
        try:
            with _stderr_to(kernel_log):
                pm.execute_notebook(
                    str(src),
                    str(tmp_nb),
                    parameters=params,
                    kernel_name=KERNEL,
                    cwd=str(NOTEBOOKS),
                    progress_bar=False,
                    log_output=False,
                )
        except Exception as exc:  # noqa: BLE001 - papermill raises its own error types and kernel errors
            FAILED.mkdir(parents=True, exist_ok=True)
            kept = FAILED / src.name
            if tmp_nb.is_file():
                shutil.copy(tmp_nb, kept)
            shutil.copy(kernel_log, FAILED / f"{src.stem}.kernel-stderr.log")
            raise ChapterFailed(
                f"chapter {src.stem} failed at {_describe_failure(exc, tmp_nb)}\npartial notebook "
                f"kept at {shown_path(kept)} (kernel log beside it)"
            ) from None
        finally:
            os.environ.clear()
            os.environ.update(old_env)
        record = tmp_results / f"{src.stem}.json"
        if not record.is_file():
            raise ChapterFailed(
                f"chapter {src.stem} ran but wrote no results record: its last cell must call "
                "run.finish(metrics=..., seeds=...)"
            )
        _finalise(tmp_nb, digest, profile, src, out)
        # the record first: a runner killed between the two renames leaves the old notebook, whose
        # hash makes the next run execute the chapter again
        publish([(record, record_out), (tmp_nb, out)])
    return "executed"


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _stage(source: Path, target: Path) -> Path:
    """A complete copy of ``source`` in a temporary file beside ``target`` (same file system),
    fsynced, with the usual umask-based mode; removed again if anything fails."""
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temp_files(target.parent)  # what a runner killed while publishing left
    fd, name = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=f".{os.getpid()}.tmp"
    )
    tmp = Path(name)
    try:
        os.close(fd)
        shutil.copyfile(source, tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def publish(files: list[tuple[Path, Path]]) -> None:
    """Put every ``(source, target)`` in place, all of them or none.

    Each source is first copied beside its target (a full disk fails here, with every target
    unchanged); then the copies are renamed over the targets in order. A failed rename puts back the
    targets already replaced (their previous content was kept as a hard link, or a renamed file
    where the file system has no hard links) and removes the new files that had no predecessor.
    Errors are :class:`BookError` naming the target."""
    for _, target in files:
        if target.is_dir():
            raise BookError(f"{shown_path(target)} is a directory where a file belongs: remove it")
    staged: list[tuple[Path, Path]] = []
    target = files[0][1]
    try:
        for source, target in files:
            staged.append((_stage(source, target), target))
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise BookError(
            f"cannot write {shown_path(target)}: {exc.strerror or exc}; book/ is unchanged"
        ) from None
    done: list[tuple[Path, Path | None]] = []  # (target, its previous content)
    try:
        for tmp, target in staged:
            backup = None
            if target.exists():
                backup = target.with_name(f".{target.name}.old.{os.getpid()}.tmp")
                backup.unlink(missing_ok=True)
                try:
                    os.link(target, backup)
                except OSError:
                    os.rename(target, backup)
            done.append((target, backup))
            os.replace(tmp, target)
    except OSError as exc:
        for put, backup in reversed(done):
            if backup is None:
                put.unlink(missing_ok=True)
            elif put.exists() and os.path.samefile(put, backup):
                backup.unlink()  # not replaced yet (rename() between two links does nothing)
            else:
                os.replace(backup, put)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise BookError(
            f"cannot replace {shown_path(target)}: {exc.strerror or exc}; book/ is unchanged"
        ) from None
    for _, backup in done:
        if backup is not None:
            backup.unlink(missing_ok=True)


def check_writable(srcs: list[Path], profile: str) -> None:
    """Before anything runs, leaving nothing behind: every folder that will receive a
    chapter's notebook or record (or, while it does not exist, its nearest existing parent) takes a
    file, and no directory sits where one of those files belongs.
    A :class:`BookError` names the path."""
    for src in srcs:
        for target in (executed_path(src, profile), results_path(src.stem, profile)):
            if target.is_dir():
                raise BookError(
                    f"{shown_path(target)} is a directory where a file belongs: remove it; "
                    "nothing was run"
                )
            folder = target.parent
            while not folder.exists() and folder != folder.parent:
                folder = folder.parent  # creating the folder is publishing's job, not the check's
            try:
                if not folder.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe.")
                os.close(fd)
                os.unlink(probe)
            except OSError as exc:
                raise BookError(
                    f"cannot write to {shown_path(folder)} ({exc.strerror or exc}); nothing was run"
                ) from None
        if nbformat.read(src, as_version=4).metadata.get(META_KEY, {}).get("reads_records"):
            for record in record_files(RESULTS):
                if not record.is_file():
                    raise BookError(
                        f"{shown_path(record)} is not a file where a run record belongs (chapter "
                        f"{src.stem} reads every record): remove it; nothing was run"
                    )


def resolve_data_env() -> None:
    """Make a relative ``$SHORTCUT_BOOK_DATA`` absolute against this process's working directory,
    once, so that the kernels (which run in notebooks/) and the workers use the same folder; and
    refuse one that is not a directory (:class:`CacheError` names it)."""
    value = os.environ.get(ENV_VAR)
    if not value:
        return
    os.environ[ENV_VAR] = os.path.abspath(os.path.expanduser(value))
    cache_root()


def prepare(profile: str, out_dir: Path, selection: list[str] | None = None) -> list[Path]:
    """Write parameterised, unexecuted copies (papermill --prepare-only) for nbval."""
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in chapters(selection):
        params = profile_values(src.stem, profile)
        dst = out_dir / src.name
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters=params,
            kernel_name=KERNEL,
            prepare_only=True,
            progress_bar=False,
        )
        written.append(dst)
    return written


REPOSITORY_ENV = "SHORTCUT_BOOK_REPOSITORY"


class RepositoryError(ValueError):
    """The book's repository address is not an https:// address."""


def book_config(repository: str | None = None) -> dict:
    """``_config.yml`` with the repository applied: ``repository`` (else
    ``$SHORTCUT_BOOK_REPOSITORY``, else the file's ``repository.url``) turns on the repository,
    issue and Binder buttons; with none, no button is rendered."""
    config = yaml.safe_load((REPO_ROOT / "_config.yml").read_text())
    url = (
        repository or os.environ.get(REPOSITORY_ENV) or config["repository"].get("url") or ""
    ).strip()
    if url and not url.startswith("https://"):
        raise RepositoryError(f"the book's repository must be an https:// address, got {url!r}")
    config["repository"]["url"] = url
    html = config.setdefault("html", {})
    html["use_repository_button"] = html["use_issues_button"] = bool(url)
    if url:
        config["launch_buttons"] = {
            "notebook_interface": "jupyterlab",
            "binderhub_url": "https://mybinder.org",
        }
    else:
        config.pop("launch_buttons", None)
    return config


def book_toc() -> dict:
    """``_toc.yml`` with an appendix part listing the full-profile copies that exist in book/full/
    (none: the toc unchanged)."""
    toc = yaml.safe_load((REPO_ROOT / "_toc.yml").read_text())
    full = [
        {"file": path.relative_to(REPO_ROOT).with_suffix("").as_posix()}
        for src in chapters()
        if (path := executed_path(src, APPENDIX_PROFILE)).is_file()
    ]
    if not full:
        return toc
    return {
        "format": toc["format"],
        "root": toc["root"],
        "parts": [
            {"caption": "Chapters", "chapters": toc["chapters"]},
            {"caption": "Appendix: full-profile runs", "chapters": full},
        ],
    }


def build_html(output: Path | None = None, repository: str | None = None) -> Path:
    """Render the book (pre-executed notebooks only; execute_notebooks is 'off') to
    ``<output>/_build/html``, with the repository buttons of :func:`book_config`."""
    config = book_config(repository)  # first: a bad address writes nothing
    out = output or REPO_ROOT
    scratch = REPO_ROOT / "build"
    scratch.mkdir(parents=True, exist_ok=True)
    written = []
    for name, content in (("_config.yml", config), ("_toc.yml", book_toc())):
        with tempfile.NamedTemporaryFile("w", suffix=name, dir=scratch, delete=False) as fh:
            yaml.safe_dump(content, fh, allow_unicode=True, sort_keys=False)
        written.append(Path(fh.name))
    cmd = [
        str(Path(sys.executable).with_name("jupyter-book")),
        "build",
        str(REPO_ROOT),
        "--builder",
        "html",
        "--config",
        str(written[0]),
        "--toc",
        str(written[1]),
    ]
    if output is not None:
        cmd += ["--path-output", str(output)]
    try:
        subprocess.run(cmd, check=True)
    finally:
        for path in written:
            path.unlink(missing_ok=True)
    return out / "_build" / "html"


def _validate_all(srcs: list[Path], profile: str) -> None:
    """Check every selected chapter's parameters before executing any of them."""
    for src in srcs:
        profile_values(src.stem, profile)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.book", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_p = sub.add_parser("run", help="execute chapters into book/ and build the HTML")
    run_p.add_argument(
        "--profile", default="quick", help=f"one of {', '.join(PROFILES)} (default: quick)"
    )
    run_p.add_argument("--chapters", nargs="*", help="chapter numbers or stems (default: all)")
    run_p.add_argument("--force", action="store_true", help="re-execute even if nothing changed")
    run_p.add_argument("--no-html", action="store_true", help="skip jupyter-book build")
    run_p.add_argument(
        "--retrain",
        action="store_true",
        help="ignore cached checkpoints (train every network again), e.g. for the published copies",
    )
    prep_p = sub.add_parser("prepare", help="write parameterised copies without executing them")
    prep_p.add_argument("--profile", default="smoke")
    prep_p.add_argument("--chapters", nargs="*")
    prep_p.add_argument("--out", type=Path, required=True)
    html_p = sub.add_parser("html", help="render book/ to _build/html")
    html_p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="folder that receives _build/ (default: repo root)",
    )
    html_p.add_argument(
        "--repository",
        default=None,
        help=f"the book's GitHub repository (https://...; default: ${REPOSITORY_ENV}, then "
        "_config.yml): turns on the repository, issue and Binder buttons",
    )
    sub.add_parser("list", help="list chapters and whether their executed copy is current")
    sweep_p = sub.add_parser(
        "sweep", help="train a chapter's grid in parallel (local, Slurm or Ray) into the cache"
    )
    from helpers.book import sweep as sweep_mod

    sweep_mod.add_arguments(sweep_p)
    args = parser.parse_args(argv)

    current = None  # the chapter being executed, for the message on Ctrl-C
    try:
        if args.command in ("run", "sweep"):
            resolve_data_env()
        if args.command == "prepare":
            for path in prepare(args.profile, args.out, args.chapters):
                print(f"prepared {path}")
            return 0
        if args.command == "html":
            print(f"HTML in {build_html(args.output, args.repository)}")
            return 0
        if args.command == "sweep":
            (src,) = chapters(args.chapters)
            return sweep_mod.main(args, src.stem)
        if args.command == "list":
            for src, profile, state in listing():
                print(f"{src.stem:<32} {profile:<6} {state}")
            return 0
        srcs = chapters(args.chapters)
        _validate_all(srcs, args.profile)
        check_writable(srcs, args.profile)
        if not args.no_html:
            book_config()  # a malformed repository address stops the run before any chapter
        clean_stale_runs()
        if args.retrain:
            # inherited by the kernels; read by cached_run
            os.environ["SHORTCUT_BOOK_RETRAIN"] = "1"
        t_all = time.perf_counter()
        for i, src in enumerate(srcs, start=1):
            current = src.stem
            print(f"[{i}/{len(srcs)}] {src.stem} ({args.profile}) ...", flush=True)
            t0 = time.perf_counter()
            state = execute(src, args.profile, force=args.force)
            print(
                f"[{i}/{len(srcs)}] {src.stem}: {state} in {time.perf_counter() - t0:.0f} s",
                flush=True,
            )
        print(f"all chapters done in {time.perf_counter() - t_all:.0f} s", flush=True)
        if not args.no_html:
            print(f"HTML in {build_html()}")
        return 0
    except (ParameterError, FileNotFoundError, RepositoryError, BookError, CacheError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ChapterFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # One line instead of papermill's asyncio/zmq tracebacks; the chapter's execution folder is
        # already gone (TemporaryDirectory) and book/ is written only after a chapter succeeds.
        what = f"chapter {current}" if current else f"'{args.command}'"
        print(
            f"interrupted: {what} stopped before it finished; book/ is unchanged", file=sys.stderr
        )
        return 130


def state_of(src: Path, profile: str) -> str:
    """'current', 'stale' or 'missing' for ``profile``'s executed copy of ``src``; 'unreadable:
    <why, naming the file>' when the notebook or the record cannot be read, or the chapter's inputs
    cannot (a directory where a record belongs)."""
    problem = copy_problem(src, profile)
    if problem:
        return f"unreadable: {problem}"
    path = executed_path(src, profile)
    if not path.is_file() or not results_path(src.stem, profile).is_file():
        return "missing"
    try:
        digest = source_hash(src, profile_values(src.stem, profile))
    except BookError as exc:
        return f"unreadable: {exc}"
    return "current" if stored_hash(path) == digest else "stale"


def listing() -> list[tuple[Path, str, str]]:
    """(chapter, profile, state): the quick copy of every chapter, and each other profile's copy
    that exists."""
    rows = []
    for src in chapters():
        for profile in PROFILES:
            if profile == MAIN_PROFILE or executed_path(src, profile).exists():
                rows.append((src, profile, state_of(src, profile)))
    return rows


if __name__ == "__main__":
    sys.exit(main())
