"""Chapter 02's grid: the cells the chapter trains are the cells a sweep submits."""

import pytest

from helpers.book import sweep as S
from helpers.book.params import profile_values
from helpers.methods import fisher as fi
from helpers.methods import fisher_grid as fg

CHAPTER = "02_fisher_regularization"


def params(profile):
    src = S.NOTEBOOKS / f"{CHAPTER}.ipynb"
    return {**S.notebook_defaults(src), **profile_values(CHAPTER, profile)}


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_the_grid_trains_every_seed_of_both_runs_and_the_paper_variant_once(profile):
    p = params(profile)
    assert profile == "smoke" or p["n_seeds"] >= 2  # the comparison rests on two seeds or more
    ref, short = fg.reference_cells(p), fg.shortcut_cells(p)
    n_paper = 1 if p["paper_variant"] else 0
    assert len(ref) == 2 * p["n_seeds"] + n_paper
    assert len(short) == 2 * len(p["shortcut_seeds"])
    assert [c for c in ref if c["method"] == "paper"] == [
        {"method": "paper", "setting": "reference", "seed": p["seed"]}
    ][:n_paper]
    assert {c["seed"] for c in ref} == set(fg.reference_seeds(p))
    assert {c["seed"] for c in short} == set(p["shortcut_seeds"])


def test_a_sweep_of_chapter_02_sees_its_grid_and_nothing_is_done_in_an_empty_cache(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(tmp_path))
    run = S.chapter_run(CHAPTER, "quick")
    (stage,) = fg.stages(run)
    cells = stage(run)
    assert len(cells) == 9
    assert not any(fg.is_done(run, c) for c in cells)
    # one key per cell: a seed or a setting never shares a checkpoint with another
    keys = {S.config_key(fg.cell_config(run, **c)) for c in cells}
    assert len(keys) == len(cells)


def test_invalid_regulariser_settings_name_the_parameter():
    p = {**params("quick"), "knn_value": 10_000}
    with pytest.raises(fi.FisherConfigError, match="knn_value"):
        fg.configs(p)


def test_more_seeds_reuse_the_cells_already_trained(tmp_path, monkeypatch):
    """n_seeds, shortcut_seeds and paper_variant choose cells, they do not change one: a third
    seed added to a finished two-seed run trains only the new cells."""
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(tmp_path))
    two = S.chapter_run(CHAPTER, "full")
    three = S.chapter_run(CHAPTER, "full")
    three.params.update(n_seeds=3, shortcut_seeds=[0, 1, 2], paper_variant=False)
    cell = {"method": "regulariser", "setting": "reference", "seed": two.params["seed"]}
    assert S.config_key(fg.cell_config(two, **cell)) == S.config_key(fg.cell_config(three, **cell))
