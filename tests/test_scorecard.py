"""The reproduction scorecard (chapter 07): records are checked and named on error, rows compare
the right numbers, and the runner re-executes the scorecard when a record changes."""

import json
import re

import pytest

from helpers.book import runner
from helpers.book import scorecard as S


def record(chapter, profile="quick", **metrics):
    return {
        "chapter": chapter,
        "profile": profile,
        "device": "cpu (2 threads)",
        "seeds": [0, 1],
        "wall_time_s": 12.0,
        "git_commit": "abc123",
        "finished_utc": "2026-12-03T12:00:00Z",
        "metrics": metrics,
    }


def write(folder, rec):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{rec['chapter']}.json"
    path.write_text(json.dumps(rec))
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not a readable JSON run record"),
        ("[1, 2]", "a run record is a JSON object"),
        (
            json.dumps({k: v for k, v in record("04_masktune").items() if k != "metrics"}),
            "no 'metrics'",
        ),
        (json.dumps({**record("04_masktune"), "seeds": "0"}), "'seeds' has the wrong type"),
        (json.dumps(record("05_rebias")), "of chapter '05_rebias'"),
    ],
)
def test_a_malformed_record_is_named(tmp_path, content, message):
    path = tmp_path / "04_masktune.json"
    path.write_text(content)
    with pytest.raises(S.RecordError, match=message) as err:
        S.load_records(tmp_path)
    assert str(path) in str(err.value)


def test_a_record_in_the_wrong_profile_folder_is_named(tmp_path):
    path = write(tmp_path / "full", record("04_masktune", profile="quick"))
    with pytest.raises(S.RecordError, match="profile 'quick' in the full folder") as err:
        S.load_records(tmp_path)
    assert str(path) in str(err.value)


def test_rows_read_the_means_over_seeds(tmp_path):
    by_seed = {"top_k 0.1": {"raw_acc_mean": 0.97, "raw_acc_std": 0.01, "biased_acc_mean": 0.8}}
    write(tmp_path, record("04_masktune", erm_biased_acc=0.5, erm_biased_acc_by_seed={"0": 0.20}))
    full = record(
        "04_masktune",
        "full",
        erm_biased_acc=0.5,  # seed 0 only: never read
        erm_biased_acc_by_seed={"0": 0.17, "1": 0.19, "2": 0.21},
        by_seed=by_seed,
    )
    full["seeds"] = [0, 1, 2]
    write(tmp_path / "full", full)
    write(tmp_path, record("06_caml", table={"CAML": {"per_seed_worst": [0.8, 0.82]}}))
    write(tmp_path, record(S.SELF))  # the scorecard's own record is not read
    rows = {r["headline"]: r for r in S.scorecard(S.load_records(tmp_path))}
    erm = rows["MaskTune paper: ERM on the biased test"]
    assert (erm["quick"], erm["n_quick"], erm["std_quick"]) == (0.20, 1, None)
    assert erm["full"] == pytest.approx(0.19)
    assert (erm["n"], erm["std"]) == (3, pytest.approx(0.02))  # sample std, ddof 1
    assert erm["delta_full"] == pytest.approx(0.19 - 0.1859)
    assert erm["bound"] == pytest.approx(0.02 + 2 * 0.02 / 3**0.5)
    assert erm["status"] == "reproduced at full scale"
    assert "full, cpu (2 threads), seeds [0, 1, 2]" in erm["provenance_full"]
    # VM's rows read the 3-seed mean, but VM ran another set-up: shown, not judged
    raw = rows["re-implementation VM, MaskTune top-k 0.1, raw test"]
    assert (raw["full"], raw["n"], raw["std"]) == (0.97, 3, 0.01)
    assert raw["status"] == "different set-up, not comparable"
    assert "blue 6×6" in raw["why"]
    # the offline substitute is never scored as the reproduction, however close it is
    caml = rows["CAML, Waterbirds worst group"]
    assert caml["status"] == "cannot be measured offline"
    assert (caml["quick"], caml["n"]) == (pytest.approx(0.81), 2)
    assert caml["why"] == S.OFFLINE_WATERBIRDS
    # a chapter without a full record says why: a GPU is needed, or the run is still to be made
    rebias = rows["ReBias, unbiased test, ρ = 0.997"]
    assert rebias["status"] == "not measured yet"
    assert "needs a GPU" in rebias["why"]


def test_chapter_02_compares_the_readme_statistic_and_shows_the_selected_one(tmp_path):
    regularised = {
        "colored_test_acc": 0.95,  # means: the scorecard reads the per-seed values
        "colored_test_acc_by_seed": [0.94, 0.96],
        "colored_test_acc_max_over_epochs": 0.97,
        "colored_test_acc_max_over_epochs_by_seed": [0.96, 0.98],
    }
    write(tmp_path, record("02_fisher_regularization", regularised=regularised))
    rows = {r["headline"]: r for r in S.scorecard(S.load_records(tmp_path))}
    row = rows["Fisher regulariser, coloured test (max over epochs)"]
    assert (row["quick"], row["beside_quick"]) == (pytest.approx(0.97), pytest.approx(0.95))
    assert row["beside_label"] == "selected on grey validation"
    assert row["n"] == 2  # the reference setting's seeds, not the record's (teaching case too)
    assert row["status"] == "not assessable (fewer than 3 seeds)"


def H(**kw):
    return S.Headline("05_rebias", "x", kw.pop("reference", 0.5), "src", "key", None, **kw)


def stat(mean, std=0.01, n=3):
    return S.Stat(mean, std, n)


@pytest.mark.parametrize(
    ("headline", "quick", "full", "status"),
    [
        # within tolerance + 2 SE over >= 3 seeds; SE = 0.03 / sqrt(3) = 0.0173, bound 0.0546
        (H(), None, stat(0.5 + 0.054, 0.03), "reproduced at full scale"),
        (H(), None, stat(0.5 - 0.056, 0.03), "not reproduced at full scale"),
        (H(), stat(0.51), None, "matches at quick scale"),
        (H(), stat(0.60), None, "differs at quick scale"),
        # the full record decides when there is one
        (H(), stat(0.60), stat(0.50), "reproduced at full scale"),
        # too few seeds, whatever the distance
        (H(), None, S.Stat(0.50, None, 1), "not assessable (fewer than 3 seeds)"),
        (H(), None, stat(0.90, 0.01, 2), "not assessable (fewer than 3 seeds)"),
        (H(), stat(0.90, 0.01, 3), stat(0.50, 0.01, 2), "not assessable (fewer than 3 seeds)"),
        # both near chance: uninformative, even with many seeds
        (
            H(reference=0.104, chance=0.1),
            stat(0.0996, 0.0, 5),
            None,
            "uninformative (chance level)",
        ),
        # the reference at chance but the book well above it: an informative difference
        (H(reference=0.10, chance=0.1), None, stat(0.40), "not reproduced at full scale"),
        (H(setup="another patch"), None, stat(0.5), "different set-up, not comparable"),
        (H(), None, None, "not measured yet"),
        (H(substitute="offline"), None, stat(0.5), "cannot be measured offline"),
    ],
)
def test_the_rule(headline, quick, full, status):
    assert S.verdict(headline, quick, full, real_data=False) == status
    assert status in S.STATUSES


def test_the_rule_is_stated_with_its_constants():
    text = S.rule_text()
    assert f"n ≥ {S.MIN_SEEDS}" in text and f"{S.SE_FACTOR:g}·SE" in text
    assert f"{100 * S.CHANCE_MARGIN:g} points" in text
    for status in S.STATUSES[:6]:
        assert status.split(" (")[0].split(" at ")[0] in text


@pytest.mark.parametrize(
    ("path", "values", "expected"),
    [
        (("m",), {"m": 0.5}, S.Stat(0.5, None, 1)),
        (("m",), {"m": float("nan")}, None),
        (("m",), {}, None),
    ],
)
def test_single_measure(path, values, expected):
    assert S.single(*path).read(record("04_masktune", **values)) == expected


def test_summary_measure_converts_a_population_std():
    rec = record("06_caml", t={"mean": 0.8, "std": 0.01})  # 2 recorded seeds
    assert S.summary("t", ddof=0).read(rec).std == pytest.approx(0.01 * 2**0.5)
    assert S.summary("t").read(rec) == S.Stat(0.8, 0.01, 2)
    rec = record("05_rebias", t={"mean": 0.3, "std": None, "n_seeds": 1})
    assert S.summary("t", n="n_seeds").read(rec) == S.Stat(0.3, None, 1)


def test_counts_and_totals_leave_the_unjudged_rows_out():
    rows = [
        {"chapter": "a", "status": "reproduced at full scale"},
        {"chapter": "a", "status": "uninformative (chance level)"},
        {"chapter": "b", "status": "different set-up, not comparable"},
        {"chapter": "b", "status": "not reproduced at full scale"},
    ]
    assert list(S.counts(rows)) == list(S.STATUSES)
    line = S.totals_line(rows)
    assert "**4 headline numbers** from 2 chapters, **2 are judged**" in line
    assert "1 reproduced at full scale, 1 not reproduced at full scale" in line
    assert "Not counted: 1 uninformative (chance level), 1 different set-up" in line


def test_reference_values_are_kept_as_published():
    refs = {h.name: h.reference for h in S.HEADLINES}
    assert refs["Fisher regulariser, coloured test (max over epochs)"] == 0.9858
    assert refs["MaskTune paper: ERM on the biased test"] == 0.1859
    assert refs["CAML, Waterbirds worst group"] == 0.8029
    for h in S.HEADLINES:  # every source says where it was read
        assert h.source and h.cite


def test_every_cited_key_is_in_the_bibliography():
    bib = (runner.REPO_ROOT / "book" / "references.bib").read_text()
    keys = {h.cite for h in S.HEADLINES}
    keys |= {e["cite"] for e in S.NOT_FOUND}
    for key in keys:
        assert re.search(rf"@\w+\{{{key},", bib), key


def test_the_published_scorecard_follows_the_rule():
    """The executed chapter 07 record: its counts are those the rule gives on the records."""
    path = S.RESULTS / f"{S.SELF}.json"
    published = json.loads(path.read_text())["metrics"]
    rows = S.scorecard(S.load_records())
    assert published["statuses"] == S.counts(rows)
    assert [r["status"] for r in published["rows"]] == [r["status"] for r in rows]


def test_the_exercises_name_only_existing_statuses():
    nb = json.loads((runner.NOTEBOOKS / "07_scorecard.ipynb").read_text())
    text = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    exercises = text[text.index("## Exercises") :]
    for quoted in re.findall(r'"([^"]+)"', exercises):
        if any(w in quoted for w in ("reproduced", "assessable", "scale", "set-up", "chance")):
            assert quoted in S.STATUSES, quoted


def test_the_runner_rehashes_the_scorecard_when_a_record_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "RESULTS", tmp_path)
    scorecard = runner.NOTEBOOKS / "07_scorecard.ipynb"
    other = runner.NOTEBOOKS / "04_masktune.ipynb"
    params = {"profile": "quick"}
    path = write(tmp_path, record("04_masktune", erm_biased_acc=0.2))
    before = runner.source_hash(scorecard, params), runner.source_hash(other, params)
    path.write_text(json.dumps(record("04_masktune", erm_biased_acc=0.3)))
    after = runner.source_hash(scorecard, params), runner.source_hash(other, params)
    assert after[0] != before[0]  # the scorecard reads the records
    assert after[1] == before[1]  # a training chapter does not


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_metric_is_a_record_error_naming_file_and_key(tmp_path, bad):
    """Issue 29, item 12: a NaN ReBias accuracy showed as missing and the row still said "differs
    at quick scale"."""
    rec = record("05_rebias", table={"ReBias": {"0.99": {"mean": bad}, "0.999": {"mean": 0.2}}})
    path = write(tmp_path, rec)  # json.dumps writes NaN / Infinity, which json.loads accepts
    with pytest.raises(S.RecordError) as err:
        S.load_records(tmp_path)
    assert str(path) in str(err.value)
    assert "metrics.table.ReBias.0.99.mean" in str(err.value) and "not a finite number" in str(
        err.value
    )


def test_chapter_03_rows_read_the_per_seed_values_and_old_single_seed_records(tmp_path):
    """Chapter 03 records the paired models' pool-test accuracy per seed; a record written before
    it did holds one number, which is read as n = 1."""
    write(tmp_path, record("03_background_pairing", paired_basic_acc=0.97, paired_noise_acc=0.9))
    full = record(
        "03_background_pairing",
        "full",
        paired_basic_acc=0.5,  # the mean beside the seeds: never read when the seeds are there
        paired_basic_acc_by_seed=[0.97, 0.98, 0.99],
        paired_noise_acc_by_seed=[0.95, 0.96, 0.97],
    )
    full["seeds"] = [0, 1, 2]
    write(tmp_path / "full", full)
    rows = {r["headline"]: r for r in S.scorecard(S.load_records(tmp_path))}
    basic = rows["paired training, pool-colour (basic) copies"]
    assert (basic["quick"], basic["n_quick"], basic["std_quick"]) == (0.97, 1, None)
    assert (basic["full"], basic["n"]) == (pytest.approx(0.98), 3)
    assert basic["std"] == pytest.approx(0.01)  # sample std, ddof 1
    assert basic["bound"] == pytest.approx(0.03 + 2 * 0.01 / 3**0.5)
    assert basic["status"] == "reproduced at full scale"  # |0.98 - 0.98| within the bound
    noise = rows["paired training, noise copies"]
    assert noise["full"] == pytest.approx(0.96)
    assert noise["status"] == "not reproduced at full scale"  # 11 points from ≈ 85 %
    # with the quick record alone (2 seeds, like the quick profile) nothing is judged
    quick = record("03_background_pairing", paired_basic_acc_by_seed={"0": 0.97, "1": 0.98})
    (tmp_path / "full" / "03_background_pairing.json").unlink()
    write(tmp_path, quick)
    rows = {r["headline"]: r for r in S.scorecard(S.load_records(tmp_path))}
    basic = rows["paired training, pool-colour (basic) copies"]
    assert basic["n"] == 2 and basic["status"] == "not assessable (fewer than 3 seeds)"


@pytest.mark.parametrize(
    ("rho_metrics", "expected"),
    [
        # the single-seed record chapter 01 writes today
        ({"unbiased_acc": 0.6, "biased_acc": 1.0}, (0.6, None, 1)),
        # per-seed values beside the single key (a list, or a mapping seed -> number)
        ({"unbiased_acc": 0.6, "unbiased_acc_by_seed": [0.5, 0.7]}, (0.6, 0.1414, 2)),
        ({"unbiased_acc_by_seed": {"0": 0.5, "1": 0.6, "2": 0.7}}, (0.6, 0.1, 3)),
        # the per-seed values at the key itself, or a mean/std/n summary there
        ({"unbiased_acc": [0.5, 0.7]}, (0.6, 0.1414, 2)),
        ({"unbiased_acc": {"mean": 0.6, "std": 0.1, "n": 3}}, (0.6, 0.1, 3)),
        ({"biased_acc": 1.0}, None),
        # what chapter 01 writes: the mean, its std and the per-seed rows under "by_seed"
        (
            {
                "unbiased_acc": 0.6,
                "unbiased_acc_std": 0.1414,
                "by_seed": {"0": {"unbiased_acc": 0.5}, "1": {"unbiased_acc": 0.7}},
            },
            (0.6, 0.1414, 2),
        ),
    ],
)
def test_chapter_01_rows_accept_single_and_per_seed_records(tmp_path, rho_metrics, expected):
    write(tmp_path, record("01_shortcut_learning", **{"rho_0.99": rho_metrics}))
    rows = {r["headline"]: r for r in S.scorecard(S.load_records(tmp_path))}
    row = rows["ERM (chapter 01's LeNet) vs Vanilla, unbiased test, ρ = 0.99"]
    assert row["reference"] == pytest.approx(0.891)  # ReBias Table 1, Vanilla
    # another network and budget than the paper's Vanilla: shown with its spread, never counted
    assert row["status"] == "different set-up, not comparable"
    if expected is None:
        assert row["quick"] is None
        return
    mean, std, n = expected
    assert (row["quick"], row["n_quick"]) == (pytest.approx(mean), n)
    assert row["std_quick"] == (None if std is None else pytest.approx(std, abs=1e-4))
