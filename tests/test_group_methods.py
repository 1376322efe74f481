import numpy as np
import pytest
import torch

from helpers.methods import group_methods as G
from helpers.models import Adapter
from helpers.tensordata import TensorData
from helpers.train import TrainConfig, accuracy_on


def test_group_metrics_on_hand_made_predictions():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    b = np.array([0, 0, 1, 1, 0, 0, 1, 1])
    p = np.array([0, 0, 0, 1, 1, 0, 1, 1])  # group accs: 1, 0.5, 0.5, 1
    r = G.group_metrics(y, b, p, train_counts=[70, 10, 5, 15])
    assert r["worst"] == pytest.approx(0.5)
    assert r["mean_of_groups"] == pytest.approx(0.75)
    assert r["plain"] == pytest.approx(6 / 8)
    assert r["weighted"] == pytest.approx(0.70 * 1 + 0.10 * 0.5 + 0.05 * 0.5 + 0.15 * 1)
    assert r["group_acc"] == [[1.0, 0.5], [0.5, 1.0]]


def _toy(n=400, seed=0, agree=0.95):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    b = torch.where(torch.rand(n, generator=gen) < agree, y, 1 - y)
    x = torch.randn(n, 4, generator=gen) + torch.stack([y.float(), 3 * b.float()], 1).repeat(1, 2)
    return TensorData(x, y, b)


def test_methods_run_and_beat_chance_on_toy():
    tr, va = _toy(), _toy(200, 1, agree=0.5)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-2, weight_decay=1e-4, seed=0)
    torch.manual_seed(0)
    out = G.train_jtt(Adapter(4), tr, va, cfg, id_epochs=1, upweight=5)
    assert out.extras["error_set_size"] == sum(out.extras["error_set_groups"])
    out = G.train_groupdro(Adapter(4), tr, va, cfg, eta=0.1)
    assert sum(out.extras["q"]) == pytest.approx(1.0, abs=1e-5)
    m = Adapter(4)
    out = G.train_lff(m, tr, va, cfg)
    # selected on plain validation accuracy, like ERM: the restored head scores that epoch's value
    best = out.history.rows[out.best_epoch - 1]["val_acc"]
    assert best == max(r["val_acc"] for r in out.history.rows)
    assert accuracy_on(m, va) == pytest.approx(best)
    assert 1 <= G.train_erm(Adapter(4), tr, va, cfg).best_epoch <= 3
    predict, c = G.train_dfr(va, seed=0)
    assert (predict(va.x) == va.y.numpy()).mean() > 0.6
    with pytest.raises(ValueError, match="eta"):
        G.train_groupdro(Adapter(4), tr, va, cfg, eta=0)
    with pytest.raises(ValueError, match="select"):
        G.train_erm(Adapter(4), tr, va, cfg, select="bad")


# ------------------------------------------------------ equal tuning effort (issue 31, item 5)
PINNED = {
    "stage1_weight_decay": 0.1,
    "sigma": 0.2,
    "jtt_id_epochs": 2,
    "jtt_upweight": 20.0,
    "dro_eta": 0.01,
    "lff_q": 0.7,
}


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"jtt_id_epochs": 1, "jtt_upweight": 1.0, "lff_q": 0.75},
        {"stage1_weight_decay": 10.0, "sigma": 2.0, "jtt_upweight": 1000.0, "dro_eta": 10.0},
        {"dro_eta": 0.0001, "lff_q": 0.05},
    ],
)
def test_every_baseline_grid_has_as_many_trials_as_camls_and_holds_the_pinned_values(changes):
    params = {**PINNED, **changes}
    grids = G.tuning_grids(params)
    assert set(grids) == {"CAML", "JTT", "GroupDRO (oracle)", "LfF"} == set(G.SELECTION_RULE)
    assert {len(g) for g in grids.values()} == {G.TUNING_TRIALS}
    for grid in grids.values():  # distinct trials, each one a complete setting
        assert len({tuple(sorted(v.items())) for v in grid}) == len(grid)
    pinned = {
        "CAML": {"stage1_weight_decay": params["stage1_weight_decay"], "sigma": params["sigma"]},
        "JTT": {"jtt_id_epochs": params["jtt_id_epochs"], "jtt_upweight": params["jtt_upweight"]},
        "GroupDRO (oracle)": {"dro_eta": params["dro_eta"]},
        "LfF": {"lff_q": params["lff_q"]},
    }
    for mth, grid in grids.items():
        assert pinned[mth] in grid, mth
    # every trial stays inside the chapter's parameter schema
    from helpers.book.params import validate

    for grid in grids.values():
        for v in grid:
            validate("06_caml", v, partial=True)


def test_the_pick_is_the_best_validation_score_and_prefers_the_pinned_value_on_a_tie():
    trials = [{"q": 0.1}, {"q": 0.7}, {"q": 0.9}]
    assert G.pick_on_validation(trials, [0.5, 0.6, 0.8], {"q": 0.7}) == {"q": 0.9}
    assert G.pick_on_validation(trials, [0.8, 0.8, 0.8], {"q": 0.7}) == {"q": 0.7}
    assert G.pick_on_validation(trials, [0.8, 0.7, 0.8], {"q": 0.7}) == {"q": 0.1}
    with pytest.raises(ValueError):
        G.pick_on_validation(trials, [0.5], {"q": 0.7})


def test_validation_score_follows_the_chapters_rule():
    data = _toy(200)
    model = Adapter(data.x.shape[1])
    assert G.validation_score(model, data, "plain") == pytest.approx(accuracy_on(model, data))
    assert G.validation_score(model, data, "worst") == pytest.approx(G.worst_group_on(model, data))
    with pytest.raises(ValueError):
        G.validation_score(model, data, "test")
