"""Chapter 08's benchmark: the splits, the equal tuning budget, the selection and the oracle
pairing step."""

import pytest
import torch

from helpers.book import sweep as S
from helpers.book.params import profile_values
from helpers.methods import benchmark_grid as G
from helpers.train import Batch

CHAPTER = "08_benchmark"


def params(profile="smoke", **over):
    src = S.NOTEBOOKS / f"{CHAPTER}.ipynb"
    return {**S.notebook_defaults(src), **profile_values(CHAPTER, profile), **over}


def test_the_splits_are_disjoint_sized_and_coloured_as_named(mnist):
    p = params(train_size=600, val_biased_size=300, val_group_size=400, test_size=500)
    sets = G.build_sets(p, 0.99, seed=3)
    assert {k: len(v) for k, v in sets.items()} == {
        "val_biased": 300,
        "train": 600,
        "test": 500,
        "val_group_fit": 200,
        "val_group": 200,
    }
    # the biased sets keep the training correlation, the group-labelled ones do not
    aligned = {k: float((v.y == v.bias).float().mean()) for k, v in sets.items()}
    assert aligned["train"] > 0.95 and aligned["val_biased"] > 0.95
    assert aligned["val_group"] < 0.3 and aligned["test"] < 0.3
    assert sets["train"].x.shape[-1] == p["image_size"]
    again = G.build_sets(p, 0.99, seed=3)
    assert torch.equal(again["train"].x, sets["train"].x)
    other = G.build_sets(p, 0.99, seed=4)
    assert not torch.equal(other["train"].y, sets["train"].y)


def test_every_method_gets_the_same_number_of_trials():
    G.check_grid(params("quick"))
    with pytest.raises(ValueError, match="same number of trials"):
        G.check_grid(params("quick", lff_qs=[0.3, 0.5, 0.7]))
    with pytest.raises(ValueError, match="builds on ERM"):
        G.check_grid(params("quick", methods=["dfr", "lff"]))


def _result(method, seed, trial, **scores):
    return G.CellResult(method, 0.99, seed, trial, trial, scores, 1.0, 0.0, False, None)


def test_selection_reads_validation_only_and_runs_without_a_test_split():
    # no test metrics at all: the selection cannot depend on them
    results = [
        _result("erm", 0, 0, val_worst_class=0.2, val_worst_group=0.1),
        _result("erm", 0, 1, val_worst_class=0.1, val_worst_group=0.3),
        _result("dfr", 0, 0, val_worst_class=0.9, val_worst_group=0.2),
    ]
    a = G.select_trials(results, "val_worst_class")
    b = G.select_trials(results, "val_worst_group")
    assert a[("erm", 0.99, 0)].trial == 0 and b[("erm", 0.99, 0)].trial == 1
    assert ("dfr", 0.99, 0) not in a and b[("dfr", 0.99, 0)].trial == 0
    with pytest.raises(ValueError, match="validation metrics only"):
        G.select_trials(results, "test_unbiased_acc")


def test_the_summary_is_mean_and_sample_std_over_seeds():
    scores = lambda u: {f"test_{k}": u for k in G.TEST_METRICS} | {"val_worst_group": 0.0}  # noqa: E731
    chosen = {("erm", 0.99, s): _result("erm", s, 0, **scores(u)) for s, u in enumerate([0.1, 0.3])}
    row = G.summary_frame(chosen).loc[("erm", 0.99)]
    assert row["unbiased_acc_mean"] == pytest.approx(0.2)
    assert row["unbiased_acc_std"] == pytest.approx(0.1414213562, rel=1e-6)  # ddof 1
    assert row["unbiased_acc_count"] == 2


def test_the_oracle_copy_is_the_same_digit_on_another_palette_colour():
    torch.manual_seed(0)
    strokes = (torch.rand(6, 1, 8, 8) > 0.7).float()
    x = (strokes * 2 - 1).expand(-1, 3, -1, -1).clone()  # white strokes on black
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3 * 8 * 8, 10)

        def forward(self, inp):
            seen["inp"] = inp.detach()
            return self.lin(inp.flatten(1))

    model = Spy()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = G.oracle_pairing_step(model, opt, lam=0.1, seed=0)
    y = torch.arange(6)
    step(Batch(x, y, y, {"strokes": strokes}, torch.arange(6)))
    originals, copies = seen["inp"].chunk(2)
    assert torch.equal(originals, x)
    on_stroke = strokes.expand_as(copies).bool()
    assert torch.all(copies[on_stroke] == 1.0)  # strokes stay white
    palette = G.PALETTE.float().div(255).mul(2).sub(1)
    for img, s in zip(copies, strokes):
        bg = img[:, s[0] == 0]  # (3, n background pixels): one palette colour each
        assert torch.allclose(bg, bg[:, :1].expand_as(bg))
        assert any(torch.allclose(bg[:, 0], c) for c in palette)


def test_the_last_layer_refit_matches_sklearn_on_standardised_features():
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 5, generator=g) * torch.tensor([1.0, 2.0, 3.0, 0.5, 1.0]) + 2.0
    y = (feats[:, 0] + feats[:, 1] > 4).long() + (feats[:, 2] > 2).long()
    w, b = G.fit_last_layer(feats, y, 1.0, seed=0)
    raw = (feats @ w.T + b).argmax(1)
    X = feats.double().numpy()
    std = (X - X.mean(0)) / (X.std(0) + 1e-8)
    clf = LogisticRegression(
        C=1.0, l1_ratio=1.0, solver="saga", max_iter=3000, tol=1e-3, random_state=0
    ).fit(std, y.numpy())
    assert (raw.numpy() == clf.predict(std)).mean() > 0.99


def test_a_sweep_of_chapter_08_has_two_stages_and_distinct_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(tmp_path))
    run = S.chapter_run(CHAPTER, "quick")
    first, second = G.stages(run)
    cells_1, cells_2 = first(run), second(run)
    assert {c["method"] for c in cells_2} == {"dfr", "masktune", "caml"}
    assert "erm" in {c["method"] for c in cells_1}
    keys = {S.config_key(G.cell_config(run, **c)) for c in cells_1 + cells_2}
    assert len(keys) == len(cells_1) + len(cells_2)
    assert not any(G.is_done(run, c) for c in cells_1)


def test_the_ten_class_margin_table_is_chapter_06s_table_with_two_classes():
    from helpers.methods import caml as C

    g = torch.Generator().manual_seed(0)
    feats = torch.randn(120, 4, generator=g)
    y = (feats[:, 0] > 0).long()
    groups = C.pseudo_groups(feats, y, None, k=3)
    table = G.margin_table(groups["clusters"], y, 3, 2)
    assert torch.allclose(table, groups["table"])
    # ten classes: rows are class shares; an empty cluster gets the uniform row
    clusters = torch.tensor([0, 0, 0, 1])
    labels = torch.tensor([3, 3, 7, 9])
    t10 = G.margin_table(clusters, labels, 3, 10)
    assert t10[0, 3] == pytest.approx(2 / 3) and t10[0, 7] == pytest.approx(1 / 3)
    assert t10[1, 9] == 1.0 and torch.allclose(t10[2], torch.full((10,), 0.1))
    assert torch.allclose(t10.sum(1), torch.ones(3))


def test_caml_trains_heads_on_frozen_features_only():
    """CAML's stages change its two heads, never the ERM backbone whose features they read, and
    its margin head scores ten classes."""
    p = params(caml_head_epochs=2, batch_size=32, caml_k=4)
    torch.manual_seed(0)
    net = G.backbone(p)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 3, p["image_size"], p["image_size"], generator=g)
    data = G.TensorData(x, torch.arange(96) % 10, torch.arange(96) % 10)
    feats = G.frozen_features(net, data)
    assert feats.x.shape == (96, 84)
    adapter, head = G.caml_heads(84, 10)
    start = [t.detach().clone() for t in head.parameters()]
    info = G.train_caml_stages(p, adapter, head, feats, feats, sigma=0.2, seed=0)
    assert set(info) == {"nmi_bias", "nmi_target"}
    evaluated = G.FrozenFeatureHead(net, head)
    assert evaluated(x[:5]).shape == (5, 10)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(a, b) for a, b in zip(start, head.parameters()))


def test_the_budget_check_trains_erm_exactly_as_the_grid_does(tmp_path, monkeypatch, mnist):
    """benchmarks/benchmark_budget.py chooses the full profile's epochs from its ERM curves; they
    are worth it only if its ERM is the grid's ERM cell, weight for weight."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "benchmark_budget", S.REPO_ROOT / "benchmarks" / "benchmark_budget.py"
    )
    budget = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(budget)
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(tmp_path))
    run = S.chapter_run(CHAPTER, "smoke")
    model, history = budget.train_erm(dict(run.params), 0.99, 0, run.params["epochs"])
    cell = G.train_cell(run, "erm", 0.99, 0, 0)
    for name, value in cell.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert history.rows[-1]["val_acc"] == pytest.approx(cell.scores["val_acc"])
    assert "test_unbiased_acc" not in history.rows[-1]  # the budget never looks at the test set
