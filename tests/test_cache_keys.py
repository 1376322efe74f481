"""Cached results are reused only when everything they depend on is the same (issue 12, item 1)."""

import ast
import shutil

import numpy as np
import pytest
import torch

from helpers.book import closure, runner
from helpers.book.chapter import ChapterRun
from helpers.book.params import swept
from helpers.cache import checkpoint_path
from helpers.data.feature_folder import content_digest, make_tiny_feature_folder

PARAMS = {
    "profile": "quick",
    "device": "auto",
    "seed": 0,
    "n_seeds": 2,
    "rhos": [0.99, 0.997],
    "methods": ["vanilla", "rebias"],
    "epochs": 4,
    "rbf_sigma": 1.0,
    "lambda_f": 1.0,
}


def _key(params=PARAMS, code="c0", **cell):
    run = ChapterRun("05_rebias", dict(params), torch.device("cpu"), code)
    return checkpoint_path("ch05", run.cache_config(**cell), root="/nowhere")


def test_every_validated_parameter_enters_the_key_but_the_sweep_axes():
    assert {"seed", "n_seeds", "rhos", "methods"} <= swept("05_rebias")
    cell = dict(method="vanilla", rho=0.997, seed=0)
    base = _key(**cell)
    # rbf_sigma is used by Vanilla's logged HSIC: it used to enter only ReBias's key
    assert _key({**PARAMS, "rbf_sigma": 0.5}, **cell) != base
    assert _key({**PARAMS, "epochs": 5}, **cell) != base
    # the grid around the cell and the plot-only names do not change its result
    assert _key({**PARAMS, "rhos": [0.997], "n_seeds": 3, "methods": ["vanilla"]}, **cell) == base
    assert _key({**PARAMS, "profile": "full", "device": "cpu"}, **cell) == base
    # the cell's own coordinates do
    assert _key(**{**cell, "rho": 0.99}) != base
    assert _key(**{**cell, "seed": 1}) != base


def test_the_code_hash_enters_the_key():
    cell = dict(method="vanilla", rho=0.997, seed=0)
    assert _key(code="c1", **cell) != _key(code="c0", **cell)


@pytest.fixture
def package(tmp_path, monkeypatch):
    """A copy of the helpers package that the closure hashes instead of the real one."""
    copy = tmp_path / "helpers"
    shutil.copytree(closure.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(closure, "PACKAGE", copy)
    monkeypatch.setattr(closure, "REPO_ROOT", tmp_path)
    return copy


def _edit(path, comment):
    path.write_text(path.read_text() + f"\n# {comment}\n")


def test_a_bug_fix_in_an_imported_helper_changes_the_code_hash(package):
    src = runner.NOTEBOOKS / "05_rebias.ipynb"
    page, networks = closure.code_hash(src), closure.training_code_hash(src)
    _edit(package / "train.py", "a bug fix in the loop")
    assert closure.code_hash(src) != page
    assert closure.training_code_hash(src) != networks


def test_a_table_fix_re_executes_the_chapter_but_keeps_its_networks(package):
    src = runner.NOTEBOOKS / "05_rebias.ipynb"
    page, networks = closure.code_hash(src), closure.training_code_hash(src)
    _edit(package / "book" / "tables.py", "one more decimal")
    assert closure.code_hash(src) != page
    assert closure.training_code_hash(src) == networks


def test_no_module_that_trains_imports_a_display_only_module():
    """What makes leaving the display-only modules out of the checkpoint keys safe: no module a
    chapter runs imports one, except the display-only modules themselves and the chapter life
    cycle, which sets the plot style."""
    root = closure.REPO_ROOT
    assert all((root / name).is_file() for name in closure.DISPLAY_ONLY)
    allowed = {("helpers/book/chapter.py", "helpers/plots.py")}  # use_book_style() only
    chapters = sorted(runner.NOTEBOOKS.glob("0*.ipynb"))
    imported = {m for src in chapters for m in closure.helper_modules(closure.notebook_code(src))}
    for module in sorted(imported):
        name = module.relative_to(root).as_posix()
        if name in closure.DISPLAY_ONLY:
            continue
        for dotted in closure._imports(module.read_text()):
            target = closure._module_file(dotted)
            if target is not None and closure.is_display_only(target):
                assert (name, target.relative_to(root).as_posix()) in allowed, (name, dotted)


def test_feature_folder_identity_is_its_content_not_its_path(tmp_path):
    folder = make_tiny_feature_folder(tmp_path / "feats", seed=0)
    digest = content_digest(folder)
    assert content_digest(folder) == digest
    # the same path with other files (what a user does when re-extracting features)
    feats = folder / "train_feats.npy"
    arr = np.load(feats)
    np.save(feats, arr + 1.0)
    assert content_digest(folder) != digest
    np.save(feats, arr)
    assert content_digest(folder) == digest


def _cache_config_calls(src):
    code = "\n".join(
        line  # IPython magics and shell lines are not Python
        for line in closure.notebook_code(src).splitlines()
        if not line.lstrip().startswith(("%", "!"))
    )
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "cache_config":
            yield node


def _data_seeds(src) -> set[str]:
    """Names passed as ``seed=`` to the data builders a notebook calls (``*mnist*`` functions)."""
    code = "\n".join(
        line
        for line in closure.notebook_code(src).splitlines()
        if not line.lstrip().startswith(("%", "!"))
    )
    names = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            func = (
                node.func.attr
                if isinstance(node.func, ast.Attribute)
                else (node.func.id if isinstance(node.func, ast.Name) else "")
            )
            if "mnist" in func.lower():
                names |= {
                    k.value.id
                    for k in node.keywords
                    if k.arg == "seed" and isinstance(k.value, ast.Name)
                }
    return names


def test_a_network_seed_other_than_the_data_seed_names_the_data():
    """A cell that keys a network by its own seed replaces the chapter's ``seed``, which also drew
    the data: the key must then name the data too (``data_seed`` or the feature folder's
    content), or a run with another ``seed`` loads networks fitted to other data (chapter 04's
    seeds 1 and 2 once did)."""
    checked = 0
    for src in sorted(runner.NOTEBOOKS.glob("0*.ipynb")):
        drawn_with = _data_seeds(src)
        for call in _cache_config_calls(src):
            kw = {k.arg: k.value for k in call.keywords}
            own_seed = "seed" in kw and not (
                isinstance(kw["seed"], ast.Name) and kw["seed"].id == "seed"
            )
            if own_seed:
                checked += 1
                # the data named in the key, or drawn from the very seed the key names (chapter
                # 01: each seed s draws its own Biased MNIST with seed=s)
                same = isinstance(kw["seed"], ast.Name) and kw["seed"].id in drawn_with
                assert same or {"data_seed", "feature_folder"} & set(kw), (
                    src.name,
                    ast.unparse(call),
                )
    assert checked >= 3  # chapter 04's ERM and fine-tunes, chapter 06's heads
