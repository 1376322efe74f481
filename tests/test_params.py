import glob
import json
from pathlib import Path

import papermill as pm
import pytest

from helpers.book import closure, runner
from helpers.book.params import PROFILES, ParameterError, load_spec, profile_values, validate

CHAPTERS = sorted(Path(p).stem for p in glob.glob(str(runner.NOTEBOOKS / "[0-9][0-9]_*.ipynb")))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_schema_matches_parameters_cell(chapter):
    cell = set(pm.inspect_notebook(str(runner.NOTEBOOKS / f"{chapter}.ipynb")))
    schema = set(load_spec(chapter)["parameters"])
    assert cell - {"profile"} == schema, (
        f"parameters cell and schema differ: {sorted(cell ^ (schema | {'profile'}))}"
    )
    assert "profile" in cell
    nb = json.loads((runner.NOTEBOOKS / f"{chapter}.ipynb").read_text())
    if not nb["metadata"].get("shortcut_book", {}).get("reads_records"):
        assert (
            "seed" in cell
        )  # every chapter that trains has one seed (the scorecard trains nothing)


@pytest.mark.parametrize("chapter", CHAPTERS)
@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_is_valid(chapter, profile):
    values = profile_values(chapter, profile)
    assert values["profile"] == profile


def test_errors_name_the_parameter():
    ch = "01_shortcut_learning"
    cases = [
        ({"epochs": "3"}, "epochs", "type int"),
        ({"epochs": 0}, "epochs", ">= 1"),
        ({"rhos": [0.5, 1.5]}, r"rhos\[1\]", "<= 1.0"),
        ({"device": "tpu"}, "device", "one of"),
        ({"colour": 3}, "colour", "not a parameter"),
        ({"epochs": True}, "epochs", "type int"),
        ({"profile": "huge"}, "profile", "one of"),
    ]
    for values, name, text in cases:
        with pytest.raises(ParameterError, match=rf"parameter '{name}' .*{text}"):
            validate(ch, values, partial=True)
    assert validate(ch, {"lr": 1}, partial=True)["lr"] == 1.0  # an int is a valid float


def test_unknown_profile_fails_before_running(capsys):
    assert runner.main(["run", "--profile", "gigantic", "--chapters", "01", "--no-html"]) == 2
    assert "parameter 'profile'" in capsys.readouterr().err


def test_bad_profile_file_fails_before_running(tmp_path, monkeypatch):
    (tmp_path / "01_shortcut_learning.yaml").write_text(
        (runner.NOTEBOOKS / "profiles" / "01_shortcut_learning.yaml")
        .read_text()
        .replace("epochs: 1}", "epochs: -4}")
    )
    with pytest.raises(ParameterError, match="'epochs'"):
        profile_values("01_shortcut_learning", "smoke", profile_dir=tmp_path)


def test_unknown_chapter_is_refused():
    with pytest.raises(SystemExit, match="unknown chapter"):
        runner.chapters(["99"])


def test_hash_follows_helper_imports():
    files = closure.helper_modules(
        "import numpy\nfrom helpers.train import fit\nfrom helpers import (metrics as M,\n "
        "plots)\nfrom helpers.methods import rebias as R\n%matplotlib inline\n"
    )
    mods = {p.relative_to(closure.REPO_ROOT / "helpers").as_posix() for p in files}
    assert {
        "train.py",
        "metrics.py",
        "plots.py",
        "tensordata.py",
        "device.py",
        "__init__.py",
        "methods/__init__.py",
        "methods/rebias.py",
        "methods/hsic.py",
    } <= mods  # hsic: imported by rebias
    assert not any("biased_mnist" in m or "numpy" in m for m in mods)


def test_editing_a_nested_helper_makes_the_chapter_stale(tmp_path, monkeypatch):
    """A chapter importing ``helpers.methods.rebias`` depends on ``hsic.py`` two levels down:
    editing it must change the chapter's hash (so the runner re-executes it instead of calling a
    stale copy current)."""
    import shutil

    package = tmp_path / "helpers"
    shutil.copytree(closure.PACKAGE, package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(closure, "PACKAGE", package)
    monkeypatch.setattr(closure, "REPO_ROOT", tmp_path)
    src = runner.NOTEBOOKS / "05_rebias.ipynb"
    params = profile_values("05_rebias", "smoke")
    before = runner.source_hash(src, params)
    assert runner.source_hash(src, params) == before
    hsic = package / "methods" / "hsic.py"
    hsic.write_text(hsic.read_text() + "\n# an edit two imports below the chapter\n")
    assert runner.source_hash(src, params) != before


def test_misspelt_papermill_parameter_stops_the_chapter_in_its_first_code_cell(tmp_path):
    """``-p epoch 3`` (for ``epochs``) only creates a new global: the chapter must refuse it, name
    it and suggest the close match, in the cell that calls start_chapter (before any data or
    training)."""
    import nbformat

    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(
            str(runner.NOTEBOOKS / "01_shortcut_learning.ipynb"),
            str(out),
            parameters={"epoch": 3},
            kernel_name="python3",
            cwd=str(runner.NOTEBOOKS),
            progress_bar=False,
        )
    assert err.value.ename == "ParameterError"
    assert "'epoch'" in err.value.evalue and "did you mean 'epochs'" in err.value.evalue
    nb = nbformat.read(out, as_version=4)
    failed = [
        c
        for c in nb.cells
        if c.cell_type == "code"
        and any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert failed and "start_chapter(" in failed[0].source


def test_injected_names_come_from_papermills_cell():
    from helpers.book.params import injected_names, parameters_from_namespace

    defaults = {
        "profile": "quick",
        "seed": 0,
        "n_seeds": 1,
        "device": "cpu",
        "rhos": [0.1, 0.9],
        "train_size": 100,
        "val_size": 500,
        "test_size": 100,
        "epochs": 4,
        "batch_size": 128,
        "lr": 1e-3,
    }
    history = [
        "",
        "profile = 'quick'\nseed = 0\n",
        "# Parameters\nepochs = 2\nbatch_szie = 64\n",
        "import torch",
    ]
    namespace = {**defaults, "epochs": 2, "batch_szie": 64, "In": history, "torch": object()}
    assert injected_names(namespace) == ["epochs", "batch_szie"]
    with pytest.raises(ParameterError, match="parameter 'batch_szie' .*did you mean 'batch_size'"):
        parameters_from_namespace("01_shortcut_learning", namespace)
    # an interactive session (no injected cell) with extra globals of its own is fine
    assert (
        parameters_from_namespace(
            "01_shortcut_learning", {**defaults, "In": history[:2] + history[3:], "mnist": {}}
        )["epochs"]
        == 4
    )
    with pytest.raises(ParameterError, match="parameter 'colour' .*not a parameter"):
        validate("01_shortcut_learning", {"colour": 3}, partial=True)


@pytest.mark.parametrize(
    "chapter", [c for c in CHAPTERS if "train_size" in load_spec(c)["parameters"]]
)
def test_train_size_too_small_for_the_data_is_refused_by_name(chapter):
    """``train_size 5`` used to fail deep in the data cell (one image per class is the builders'
    minimum)."""
    with pytest.raises(ParameterError, match=r"parameter 'train_size' must be >= 10, got 5"):
        validate(chapter, {"train_size": 5}, partial=True)
    assert validate(chapter, {"train_size": None}, partial=True)["train_size"] is None  # null = all
    assert validate(chapter, {"train_size": 10}, partial=True)["train_size"] == 10


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if "lr" in load_spec(c)["parameters"]])
def test_zero_learning_rate_is_refused(chapter):
    with pytest.raises(ParameterError, match=r"parameter 'lr' must be > 0.0, got 0.0"):
        validate(chapter, {"lr": 0}, partial=True)
    assert validate(chapter, {"lr": 1e-6}, partial=True)["lr"] == 1e-6


# ------------------------------------------------------------------ issue 29: bounds on every value
FLOAT_PARAMS = [
    (c, n)
    for c in CHAPTERS
    for n, r in load_spec(c)["parameters"].items()
    if r["type"] == "float" or (r["type"] == "list" and r.get("item") == "float")
]


@pytest.mark.parametrize(("chapter", "name"), FLOAT_PARAMS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_inf_are_refused_for_every_float_parameter(chapter, name, bad):
    """Item 3: NaN passes every range comparison (``-p sigma nan`` trained chapter 06 for minutes
    and then failed elsewhere)."""
    rule = load_spec(chapter)["parameters"][name]
    value = [bad] * max(1, rule.get("min_len", 1)) if rule["type"] == "list" else bad
    with pytest.raises(ParameterError, match=rf"parameter '{name}(\[0\])?' must be a finite"):
        validate(chapter, {name: value}, partial=True)


def test_nan_inside_a_dict_parameter_is_refused():
    with pytest.raises(ParameterError, match=r"'consistency_ablation\['kl'\]' must be a finite"):
        validate(
            "03_background_pairing", {"consistency_ablation": {"kl": float("inf")}}, partial=True
        )


@pytest.mark.parametrize("chapter", [c for c in CHAPTERS if "seed" in load_spec(c)["parameters"]])
def test_a_seed_beyond_its_range_is_refused_by_name(chapter):
    """Item 4: ``-p seed 18446744073709551616`` failed in torch naming nothing."""
    with pytest.raises(ParameterError, match=r"parameter 'seed' must be <= 4294967295"):
        validate(chapter, {"seed": 2**64}, partial=True)
    assert validate(chapter, {"seed": 2**32 - 1}, partial=True)["seed"] == 2**32 - 1


def test_a_huge_list_is_refused_by_name():
    """Item 5: a ``rhos`` list of 10**6 entries looped until killed."""
    for chapter in ("01_shortcut_learning", "05_rebias"):
        with pytest.raises(ParameterError, match=r"parameter 'rhos' takes at most \d+ entries"):
            validate(chapter, {"rhos": [0.5] * 10**6}, partial=True)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_int_list_and_dict_parameter_is_bounded(chapter):
    for name, rule in load_spec(chapter)["parameters"].items():
        if rule["type"] in ("list", "dict"):
            assert "max_len" in rule, name
        if "int" in (rule["type"], rule.get("item")):
            assert "max" in rule or "choices" in rule, name


@pytest.mark.parametrize(
    ("rule", "missing"),
    [
        ("{type: int, min: 0}", "max or choices"),
        ("{type: list, item: float, max: 1.0}", "max_len"),
        ("{type: list, item: int, max_len: 3}", "max or choices"),
        ("{type: dict}", "max_len"),
    ],
)
def test_a_schema_without_a_bound_is_refused(tmp_path, rule, missing):
    (tmp_path / "99_x.yaml").write_text(f"parameters:\n  p: {rule}\nprofiles: {{}}\n")
    with pytest.raises(ValueError, match=rf"99_x.yaml: the rule for 'p' needs {missing}"):
        load_spec("99_x", tmp_path)


def test_a_yaml_alias_bomb_in_a_parameter_file_is_refused_at_once(tmp_path):
    """papermill's ``-y`` expands aliases before any kernel starts (it hangs); the book's own
    loader refuses anchors and aliases outright."""
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, n in zip("abcdefgh", "bcdefghi")
    )
    (tmp_path / "99_bomb.yaml").write_text(bomb + "parameters: {}\nprofiles: {}\n")
    with pytest.raises(ValueError, match=r"99_bomb.yaml: .*anchors"):
        load_spec("99_bomb", tmp_path)
