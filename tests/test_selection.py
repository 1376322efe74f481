import math

import pytest
import torch
from torch import nn

from helpers import selection as S
from helpers.methods import debias as D
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import fit


def test_validation_metrics_hand_computed():
    y = [0, 0, 1, 1, 2, 2]
    pred = [0, 1, 1, 1, 2, 0]
    bias = [0, 1, 1, 0, 2, 2]
    m = S.validation_metrics(y, pred, num_classes=3, bias=bias, num_biases=3)
    assert m["val_acc"] == pytest.approx(4 / 6)
    assert m["val_worst_class"] == pytest.approx(0.5)  # classes: 1/2, 1, 1/2
    # groups (y, b): (0,0) 1, (0,1) 0, (1,1) 1, (1,0) 1, (2,2) 1/2; the others are empty
    assert m["val_worst_group"] == pytest.approx(0.0)
    assert m["val_mean_of_groups"] == pytest.approx((1 + 0 + 1 + 1 + 0.5) / 5)
    no_bias = S.validation_metrics(y, pred, num_classes=3)
    assert set(no_bias) == {"val_acc", "val_worst_class"}


def test_each_rule_picks_its_trial():
    trials = {
        "A": {"val_acc": 0.9, "val_worst_class": 0.5, "val_worst_group": 0.1},
        "B": {"val_acc": 0.8, "val_worst_class": 0.7, "val_worst_group": 0.3},
        "C": {"val_acc": 0.7, "val_worst_class": 0.6, "val_worst_group": 0.6},
        "D": {"val_acc": 0.9, "val_worst_class": math.nan, "val_worst_group": 0.6},
    }
    chosen = S.select_all(trials)
    # ties go to the trial listed first (A before D, C before D); NaN never wins
    assert chosen == {"val_acc": "A", "val_worst_class": "B", "val_worst_group": "C"}
    assert S.select_all(trials, S.NO_BIAS_LABELS) == {"val_acc": "A", "val_worst_class": "B"}
    assert not any(S.RULES[r].needs_bias for r in S.NO_BIAS_LABELS)
    assert all(S.RULES[r].needs_bias for r in S.VAL_BIAS_LABELS)


def test_selection_refuses_anything_but_validation_metrics():
    trials = {"A": {"val_acc": 0.9, "test_acc": 0.5}, "B": {"val_acc": 0.8}}
    with pytest.raises(ValueError, match="test_acc"):
        S.select(trials, "val_acc")
    with pytest.raises(ValueError, match="rule"):
        S.select({"A": {"val_acc": 0.9}}, "test_worst_group")
    with pytest.raises(ValueError, match="val_worst_group"):
        S.select({"A": {"val_acc": 0.9}}, "val_worst_group")
    with pytest.raises(ValueError, match="trials"):
        S.select({}, "val_acc")
    with pytest.raises(ValueError, match="NaN"):
        S.select({"A": {"val_acc": math.nan}}, "val_acc")
    with pytest.raises(ValueError, match="num_biases"):
        S.validation_metrics([0], [0], num_classes=2, bias=[0])


def _split(n, agree, seed):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    b = torch.where(
        torch.rand(n, generator=gen) < agree, y, torch.randint(0, 3, (n,), generator=gen)
    )
    x = torch.randn(n, 3, 4, 4, generator=gen) + b[:, None, None, None].float()
    x[:, 0] += y[:, None, None].float()
    return TensorData(x, y, b)


def _linear_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 3))


def test_selection_runs_on_data_without_a_test_split():
    """The whole protocol (train trials, score them on validation, select per rule) on a data set
    that has no test split at all: nothing in it can read one."""
    sets = {"train": _split(96, 0.9, 0), "val": _split(60, 0.9, 1)}  # no "test" key
    trials = {}
    for lr in (0.01, 0.1):
        seed_everything(0)
        setup = D.build("erm", _linear_net, sets["train"], lr=lr, num_classes=3)
        model = setup.modules["model"]
        h = fit(
            sets["train"],
            setup.step,
            epochs=3,
            batch_size=16,
            modules=model,
            seed=0,
            progress=False,
            evaluate=lambda: S.evaluate_validation(model, sets["val"], num_classes=3, num_biases=3),
        )
        trials.update(S.trials_from_history(("erm", lr), h))
    assert len(trials) == 6 and all(
        set(r) >= {"val_acc", "val_worst_group"} for r in trials.values()
    )
    chosen = S.select_all(trials)
    assert set(chosen) == {"val_acc", "val_worst_class", "val_worst_group"}
    for rule, trial in chosen.items():
        best = max(r[S.RULES[rule].metric] for r in trials.values())
        assert trials[trial][S.RULES[rule].metric] == best
    # rule (a): validation without bias labels
    unlabelled = TensorData(sets["val"].x, sets["val"].y)
    m = S.evaluate_validation(model, unlabelled, num_classes=3)
    assert set(m) == {"val_acc", "val_worst_class"}
    with pytest.raises(ValueError, match="bias"):
        S.evaluate_validation(model, unlabelled, num_classes=3, num_biases=3)
