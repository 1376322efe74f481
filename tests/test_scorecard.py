"""The reproduction scorecard (chapter 07): records are checked and named on error, rows compare
the right numbers, and the runner re-executes the scorecard when a record changes."""

import json

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


def test_rows_read_the_measured_numbers(tmp_path):
    sweep = {"top_k": {"0.1": {"raw_acc": 0.97, "biased_acc": 0.80}}}
    write(tmp_path, record("04_masktune", erm_biased_acc=0.20, sweep=sweep))
    write(tmp_path / "full", record("04_masktune", "full", erm_biased_acc=0.19, sweep=sweep))
    write(tmp_path, record("06_caml", table={"CAML": {"worst": 0.8, "mean_of_groups": 0.85}}))
    write(tmp_path, record(S.SELF))  # the scorecard's own record is not read
    rows = {r["headline"]: r for r in S.scorecard(S.load_records(tmp_path))}
    erm = rows["MaskTune paper: ERM on the biased test"]
    assert (erm["quick"], erm["full"]) == (0.20, 0.19)
    assert erm["delta_full"] == pytest.approx(0.19 - 0.1859)
    assert erm["status"] == "reproduced at full scale"
    assert "full, cpu (2 threads), seeds [0, 1]" in erm["provenance_full"]
    biased = rows["re-implementation VM, MaskTune top-k 0.1, biased test"]
    assert biased["status"] == "not reproduced at full scale"
    # the offline substitute is never scored as the reproduction, however close it is
    assert rows["CAML, Waterbirds worst group"]["status"] == "cannot be measured offline"
    assert rows["ReBias, unbiased test, ρ = 0.997"]["status"] == "not measured yet"
    # a chapter without a full record says why: a GPU is needed, or the run is still to be made
    assert "needs a GPU" in rows["ReBias, unbiased test, ρ = 0.997"]["why"]
    caml = rows["CAML, Waterbirds worst group"]
    assert caml["why"] == S.OFFLINE_WATERBIRDS


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
