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
