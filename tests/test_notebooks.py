"""Source notebooks stay output-free, parameterised and runnable by the runner."""

import glob
import json
from pathlib import Path

import pytest

from helpers.book.runner import BOOK, NOTEBOOKS

SOURCES = sorted(glob.glob(str(NOTEBOOKS / "[0-9][0-9]_*.ipynb")))


def test_there_are_chapters():
    assert SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: Path(p).stem)
def test_source_is_clean_and_parameterised(path):
    nb = json.loads(Path(path).read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), (
        "source carries outputs"
    )
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, "exactly one cell must be tagged 'parameters'"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    text = "".join("".join(c["source"]) for c in code)
    assert "start_chapter(" in text and "run.finish(" in text


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: Path(p).stem)
def test_executed_copy_and_record_exist(path):
    stem = Path(path).stem
    executed = json.loads((BOOK / f"{stem}.ipynb").read_text())
    record = json.loads((BOOK / "results" / f"{stem}.json").read_text())
    assert executed["metadata"]["shortcut_book"]["hash"]
    assert {"chapter", "profile", "device", "seeds", "wall_time_s", "git_commit", "metrics"} <= set(
        record
    )
    assert record["chapter"] == stem and record["metrics"]
    injected = [
        c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])
    ]
    assert all("remove-cell" in c["metadata"]["tags"] for c in injected)
    errors = [
        o
        for c in executed["cells"]
        for o in c.get("outputs", [])
        if o.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: Path(p).stem)
def test_chapter_is_in_the_toc_and_the_readme(path):
    stem = Path(path).stem
    root = NOTEBOOKS.parent
    assert f"file: book/{stem}\n" in (root / "_toc.yml").read_text(), (
        f"{stem} missing from _toc.yml"
    )
    assert f"`notebooks/{stem}.ipynb`" in (root / "README.md").read_text(), (
        f"{stem} missing from README's table"
    )


def test_a_bad_parameter_stops_the_chapter_in_its_first_code_cell(tmp_path):
    """A value only the chapter can judge (knn_value against batch_size · n_samples) fails before
    any data or training, with the parameter's name in the error."""
    import nbformat
    import papermill as pm

    src = NOTEBOOKS / "02_fisher_regularization.ipynb"
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(src),
            str(out),
            parameters={"knn_value": 100000, "batch_size": 8},
            kernel_name="python3",
            cwd=str(NOTEBOOKS),
            progress_bar=False,
        )
    assert err.value.ename == "ParameterError" and "knn_value" in err.value.evalue
    nb = nbformat.read(out, as_version=4)
    failed = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code"
        and any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert failed and "start_chapter(" in nb.cells[failed[0]].source
