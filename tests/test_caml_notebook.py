"""Chapter 06 through the user-folder code path: the notebook on a tiny generated feature folder
(smoke size)."""

import json

import numpy as np
import papermill as pm
import pytest

from helpers.book import runner
from helpers.data.feature_folder import make_tiny_feature_folder


def test_notebook_runs_on_a_user_feature_folder(tmp_path, monkeypatch):
    """Also issue 29, item 6: a user folder named ``offline-mnist`` (the built-in default's label)
    was taken for the default and crashed with ``KeyError: 'feature_dim'``."""
    folder = make_tiny_feature_folder(tmp_path / "offline-mnist", seed=0)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    monkeypatch.setenv("SHORTCUT_BOOK_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv(
        "SHORTCUT_BOOK_DATA", str(tmp_path / "cache")
    )  # checkpoints of this run stay in tmp
    out = tmp_path / "06_caml_user.ipynb"
    pm.execute_notebook(
        str(runner.NOTEBOOKS / "06_caml.ipynb"),
        str(out),
        kernel_name="python3",
        progress_bar=False,
        cwd=str(runner.NOTEBOOKS),
        parameters={
            "profile": "smoke",
            "seeds": [1, 2],
            "epochs": 2,
            "batch_size": 32,
            "feature_folder": str(folder),
        },
    )
    text = out.read_text()
    assert "User feature folder `offline-mnist (user folder)`" in text
    assert "offline feature folder" not in text
    record = json.loads((tmp_path / "results" / "06_caml.json").read_text())
    assert record["metrics"]["data_source"] == "offline-mnist (user folder)"
    assert set(record["metrics"]["table"]) >= {
        "ERM",
        "CAML",
        "JTT",
        "LfF",
        "DFR",
        "GroupDRO (oracle)",
    }
    # issue 31: sample std (ddof 1) over the seeds, like every other chapter
    caml = record["metrics"]["table"]["CAML"]
    assert caml["worst_std"] == pytest.approx(np.std(caml["per_seed_worst"], ddof=1))
    # issue 31: every tuned method got the same number of validation trials, none on the test set
    trials = record["metrics"]["validation_trials"]
    per_method = {m: sum(t["method"] == m for t in trials) for m in {t["method"] for t in trials}}
    assert set(per_method) == {"CAML", "JTT", "LfF", "GroupDRO (oracle)"}
    assert set(per_method.values()) == {9}
    assert set(record["metrics"]["chosen_values"]) == set(per_method)
    nb = json.loads(text)
    assert not any(
        o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", [])
    )
