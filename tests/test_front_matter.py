"""The introduction's run-time table comes from the run records, not from typed numbers."""

import json

import nbformat
import pytest

from helpers.book import front_matter as fm
from helpers.book.layout import profile_folder
from helpers.cache import REPO_ROOT


def _chapter(root, stem, profile, wall, device, *, cached=False):
    folder = profile_folder(root / "book", profile)
    results = profile_folder(root / "book" / "results", profile)
    folder.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    record = {"chapter": stem, "profile": profile, "device": device, "wall_time_s": wall}
    (results / f"{stem}.json").write_text(json.dumps(record))
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Chapter 9 — A test chapter\n\nText.")]
    code = nbformat.v4.new_code_cell("train()")
    text = "loaded checkpoint x.pt (delete it ...)\n" if cached else "epoch 1\n"
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.cells.append(code)
    nbformat.write(nb, folder / f"{stem}.ipynb")


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "under 1 s"), (42.3, "42 s"), (176.1, "3 min"), (4905.2, "82 min"), (8344, "2.3 h")],
)
def test_durations_read_as_a_reader_wants(seconds, text):
    assert fm.duration(seconds) == text


def test_rows_come_from_the_records(tmp_path):
    _chapter(tmp_path, "09_test", "quick", 176.1, "cpu (2 threads)")
    _chapter(tmp_path, "09_test", "full", 277.1, "cpu (1 threads)", cached=True)
    _chapter(tmp_path, "10_gpu", "full", 90.0, "cuda (NVIDIA H100)")
    rows = fm.runtime_rows(tmp_path, ["09_test", "10_gpu", "11_none"])
    assert rows[0][0] == "[9](09_test.ipynb) A test chapter"
    assert rows[0][1] == "3 min, cpu (2 threads)"
    assert rows[0][2].startswith("5 min, cpu (1 threads); trained networks loaded from the cache")
    assert rows[0][3] == "no GPU run recorded yet"
    assert rows[1][1] == rows[1][2] == "not run yet"
    assert rows[1][3] == "full: 90 s, cuda (NVIDIA H100)"
    assert rows[2][1:3] == ["not run yet", "not run yet"]


def test_the_table_lists_every_numbered_chapter_of_the_toc():
    stems = fm.toc_chapters(REPO_ROOT)
    assert stems and all(s[:2].isdigit() for s in stems)
    table = fm.runtime_table(REPO_ROOT, stems)
    assert len(table.splitlines()) == len(stems) + 2
    for stem in stems:
        assert f"({stem}.ipynb)" in table


def _loaded_row(tmp_path, loaded: int, original: float, metrics: dict | None = None) -> str:
    """The quick column of a chapter whose record loaded ``loaded`` networks trained in
    ``original`` seconds."""
    _chapter(tmp_path, "09_test", "quick", 61.0, "cpu (2 threads)")
    path = tmp_path / "book" / "results" / "09_test.json"
    record = json.loads(path.read_text())
    record["training"] = {
        "networks_trained": 0,
        "train_time_s": 0.0,
        "networks_loaded": loaded,
        "loaded_original_train_time_s": original,
    }
    if metrics is not None:
        record["metrics"] = metrics
    path.write_text(json.dumps(record))
    return fm.runtime_rows(tmp_path, ["09_test"])[0][1]


def test_a_record_that_counts_training_names_the_loaded_networks_time(tmp_path):
    assert _loaded_row(tmp_path, 4, 620.0) == (
        "61 s, cpu (2 threads); 4 trained networks loaded from the cache (their training: 10 min)"
    )


def test_a_resumed_runs_epoch_sum_outranks_the_checkpoints_own_time(tmp_path):
    row = _loaded_row(tmp_path, 2, 600.0, {"epoch_seconds_all_runs": 1200.0})
    assert row.endswith("2 trained networks loaded from the cache (their training: 20 min)")


def test_method_costs_come_from_chapter_08s_record_full_first(tmp_path):
    assert fm.method_cost(tmp_path, "JTT") == "chapter 08 has not run yet"
    quick = profile_folder(tmp_path / "book" / "results", "quick")
    quick.mkdir(parents=True)
    (quick / "08_benchmark.json").write_text(
        json.dumps({"metrics": {"relative_cost": {"JTT": 1.62, "ERM": 1.0}}})
    )
    assert fm.method_cost(tmp_path, "JTT") == "1.6× ERM (quick profile)"
    assert fm.method_cost(tmp_path, "CAML") == "not in chapter 08's quick run"
    full = profile_folder(tmp_path / "book" / "results", "full")
    full.mkdir(parents=True)
    (full / "08_benchmark.json").write_text(
        json.dumps({"metrics": {"relative_cost": {"JTT": 2.04}}})
    )
    assert fm.method_cost(tmp_path, "JTT") == "2.0× ERM (full profile)"


def test_the_introduction_types_no_cost_number():
    """Every relative cost in the introduction's "which method needs what" table is a role that
    reads chapter 08's record, or says why the method is not in chapter 08."""
    rows = [
        line
        for line in (REPO_ROOT / "book" / "intro.md").read_text().splitlines()
        if line.startswith("| ") and "|---" not in line
    ]
    needs = [r for r in rows if r.count("|") == 9 and not r.startswith("| method")]
    assert len(needs) >= 12
    for row in needs:
        last = row.rstrip(" |").rsplit("|", 1)[1].strip()
        assert last.startswith("{method-cost}") or last.startswith(
            ("1 (the reference)", "not in")
        ), row
