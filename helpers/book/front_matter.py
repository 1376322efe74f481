"""Sphinx extension: the introduction's table of chapter run times, written at build time from the
run records (``book/results/<chapter>.json``, ``book/results/full/<chapter>.json``), never typed.

In a MyST page::

    ```{chapter-runtimes}
    ```

renders one row per chapter of ``_toc.yml`` with the wall time of its quick and full runs on a CPU
and of any run recorded on a GPU, each with the device the record names. A run whose executed copy
loaded trained networks from the checkpoint cache is marked: its wall time leaves training out.

The role ``{method-cost}`ReBias``` writes a method's training cost relative to ERM as chapter 08
measured it (its full record when there is one, else the quick one), so the introduction's "which
method needs what" table carries measured numbers.

Enabled in ``_config.yml`` (``sphinx.extra_extensions``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

from helpers.book.layout import APPENDIX_PROFILE, MAIN_PROFILE, profile_folder

# what helpers.cache.cached_run printed, before records counted it, when it loaded a network
CACHED = "loaded checkpoint "
GPU_DEVICES = ("cuda", "mps")
_TITLE = re.compile(r"^#\s+(?:Chapter\s+\d+\s+[—–-]\s+)?(.+)$", re.MULTILINE)


def duration(seconds: float) -> str:
    """A wall time as a reader wants it: seconds below two minutes, else minutes, else hours."""
    if seconds < 1:
        return "under 1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 100 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _record(root: Path, stem: str, profile: str) -> dict | None:
    path = profile_folder(root / "book" / "results", profile) / f"{stem}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _executed(root: Path, stem: str, profile: str) -> Path:
    return profile_folder(root / "book", profile) / f"{stem}.ipynb"


def loaded_from_cache(notebook: Path) -> bool:
    """Whether the executed copy loaded any trained network from the checkpoint cache."""
    if not notebook.is_file():
        return False
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and CACHED in out.get("text", ""):
                return True
    return False


def chapter_title(notebook: Path) -> str:
    """The chapter's title without its "Chapter N —" prefix (first heading of the notebook)."""
    nb = nbformat.read(notebook, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown" and (m := _TITLE.search(cell.source)):
            return m.group(1).strip()
    return notebook.stem


def _cell(record: dict | None, notebook: Path) -> str:
    if record is None:
        return "not run yet"
    text = f"{duration(record['wall_time_s'])}, {record['device']}"
    training = record.get("training")
    if training is None:  # a record from before training was timed: read the executed copy
        if loaded_from_cache(notebook):
            text += "; trained networks loaded from the cache (training not timed)"
    elif training["networks_loaded"]:
        original = training["loaded_original_train_time_s"]
        # a checkpoint times only the process that finished it; a chapter whose runs were resumed
        # records the sum of every epoch, which is the truer figure
        every_epoch = record.get("metrics", {}).get("epoch_seconds_all_runs")
        if every_epoch is not None:
            original = max(every_epoch, original or 0.0)
        text += f"; {training['networks_loaded']} trained networks loaded from the cache" + (
            f" (their training: {duration(original)})" if original is not None else ""
        )
    return text


def runtime_rows(root: Path, stems: list[str]) -> list[list[str]]:
    """One row per chapter: link, quick run on a CPU, full run on a CPU, any run on a GPU."""
    rows = []
    for stem in stems:
        number = int(stem[:2])
        quick_nb = _executed(root, stem, MAIN_PROFILE)
        title = chapter_title(quick_nb) if quick_nb.is_file() else stem
        cpu, gpu = {}, []
        for profile in (MAIN_PROFILE, APPENDIX_PROFILE):
            record = _record(root, stem, profile)
            if record is None:
                continue
            if str(record["device"]).startswith(GPU_DEVICES):
                gpu.append(f"{profile}: {_cell(record, _executed(root, stem, profile))}")
            else:
                cpu[profile] = record
        rows.append(
            [
                f"[{number}]({stem}.ipynb) {title}",
                _cell(cpu.get(MAIN_PROFILE), quick_nb),
                _cell(cpu.get(APPENDIX_PROFILE), _executed(root, stem, APPENDIX_PROFILE)),
                "; ".join(gpu) or "no GPU run recorded yet",
            ]
        )
    return rows


def runtime_table(root: Path, stems: list[str]) -> str:
    """The rows of :func:`runtime_rows` as a Markdown table."""
    lines = [
        "| chapter | quick profile, CPU | full profile, CPU | on a GPU |",
        "|---|---|---|---|",
    ]
    for row in runtime_rows(root, stems):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def toc_chapters(root: Path) -> list[str]:
    """The numbered chapters of ``_toc.yml``, in order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = toc.get("chapters") or [c for part in toc.get("parts", []) for c in part["chapters"]]
    names = [Path(e["file"]).name for e in entries]
    return [n for n in names if n[:2].isdigit()]


class ChapterRuntimes(SphinxDirective):
    """``{chapter-runtimes}``: the run-time table of the chapters, from their records."""

    has_content = False

    def run(self):
        root = Path(self.env.srcdir)
        stems = toc_chapters(root)
        for stem in stems:  # the page is rebuilt when a record or executed copy changes
            for profile in (MAIN_PROFILE, APPENDIX_PROFILE):
                for path in (
                    profile_folder(root / "book" / "results", profile) / f"{stem}.json",
                    _executed(root, stem, profile),
                ):
                    if path.is_file():
                        self.env.note_dependency(str(path))
        content = StringList(runtime_table(root, stems).splitlines(), source="chapter-runtimes")
        node = nodes.container(classes=["chapter-runtimes"])
        self.state.nested_parse(content, self.content_offset, node)
        return [node]


BENCHMARK = "08_benchmark"


def method_cost(root: Path, method: str) -> str:
    """``method``'s cost relative to ERM in chapter 08's record (full if present, else quick), with
    the profile it comes from; a sentence saying so when the benchmark has no such method."""
    for profile in (APPENDIX_PROFILE, MAIN_PROFILE):
        record = _record(root, BENCHMARK, profile)
        if record is None:
            continue
        costs = record.get("metrics", {}).get("relative_cost", {})
        if method in costs:
            return f"{costs[method]:.1f}× ERM ({profile} profile)"
        return f"not in chapter 08's {profile} run"
    return "chapter 08 has not run yet"


def method_cost_role(name, rawtext, text, lineno, inliner, options=None, content=None):
    """``{method-cost}`NAME```: :func:`method_cost` of the method chapter 08 calls NAME."""
    env = inliner.document.settings.env
    root = Path(env.srcdir)
    for profile in (APPENDIX_PROFILE, MAIN_PROFILE):
        path = profile_folder(root / "book" / "results", profile) / f"{BENCHMARK}.json"
        if path.is_file():
            env.note_dependency(str(path))
    return [nodes.Text(method_cost(root, text.strip()))], []


def setup(app):
    app.add_directive("chapter-runtimes", ChapterRuntimes)
    app.add_role("method-cost", method_cost_role)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
