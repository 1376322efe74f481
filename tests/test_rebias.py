import pytest
import torch

from helpers.methods.rebias import rebias_step
from helpers.models import SimpleConvNet
from helpers.train import Batch


def _batch(m=8):
    g = torch.Generator().manual_seed(0)
    return Batch(
        x=torch.rand(m, 3, 28, 28, generator=g),
        y=torch.randint(0, 10, (m,), generator=g),
        bias=None,
        extras={},
        idx=torch.arange(m),
    )


def _nets():
    torch.manual_seed(0)
    f, g = SimpleConvNet(7, width=0.125), SimpleConvNet(1, width=0.125)
    return f, g, torch.optim.Adam(f.parameters(), 1e-3), torch.optim.Adam(g.parameters(), 1e-3)


def _params(m):
    return [p.detach().clone() for p in m.parameters()]


def test_rebias_step_updates_both_networks_and_logs_hsic():
    f, g, of, og = _nets()
    before_f, before_g = _params(f), _params(g)
    logged = rebias_step(f, g, of, og)(_batch())
    assert all(k in logged for k in ("loss", "acc", "hsic", "g_loss", "g_acc"))
    assert any(not torch.equal(a, b) for a, b in zip(before_f, f.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before_g, g.parameters()))


def test_zero_lambdas_reduce_to_two_independent_supervised_steps():
    from helpers.train import supervised_step

    f, g, of, og = _nets()
    rebias_step(f, g, of, og, lambda_f=0.0, lambda_g=0.0)(_batch())
    f2, g2, of2, og2 = _nets()
    supervised_step(g2, og2)(_batch())
    supervised_step(f2, of2)(_batch())
    for a, b in zip(
        list(f.parameters()) + list(g.parameters()), list(f2.parameters()) + list(g2.parameters())
    ):
        assert torch.allclose(a, b, atol=1e-6)


def test_hsic_term_changes_f_update():
    f, g, of, og = _nets()
    rebias_step(f, g, of, og, lambda_f=0.0, lambda_g=0.0)(_batch())
    f2, g2, of2, og2 = _nets()
    rebias_step(f2, g2, of2, og2, lambda_f=100.0, lambda_g=0.0)(_batch())
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(g.parameters(), g2.parameters()))
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(f.parameters(), f2.parameters()))


def test_rebias_refuses_tiny_batch_and_bad_lambda():
    f, g, of, og = _nets()
    with pytest.raises(ValueError, match="m=3"):
        rebias_step(f, g, of, og)(_batch(3))
    with pytest.raises(ValueError, match="lambda_g"):
        rebias_step(f, g, of, og, lambda_g=-1)


# ---------------------------------------------------------------------------------------- baselines
from helpers.methods.rebias import independent_step, learned_mixin_step, rubi_step  # noqa: E402


def _changed(before, module):
    return any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))


def _state(m):
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def test_independent_step_updates_both_and_measures_hsic():
    f, g, of, og = _nets()
    bf, bg = _params(f), _params(g)
    logged = independent_step(f, g, of, og)(_batch())
    assert _changed(bf, f) and _changed(bg, g)
    assert "hsic" in logged and torch.isfinite(logged["hsic"])


def test_independent_step_equals_two_supervised_steps():
    from helpers.train import supervised_step

    f, g, of, og = _nets()
    independent_step(f, g, of, og)(_batch())
    f2, g2, of2, og2 = _nets()
    supervised_step(g2, og2)(_batch())
    supervised_step(f2, of2)(_batch())
    for a, b in zip(
        list(f.parameters()) + list(g.parameters()), list(f2.parameters()) + list(g2.parameters())
    ):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("train_extra", [True, False])
def test_rubi_step_trains_f_g_and_head_only_if_asked(train_extra):
    f, g, of, og = _nets()
    head = torch.nn.Linear(g.feature_dim, 10)
    oh = torch.optim.Adam(head.parameters(), 1e-3) if train_extra else None
    bf, bg, bh = _params(f), _params(g), _params(head)
    logged = rubi_step(f, g, head, of, og, oh)(_batch())
    assert _changed(bf, f) and _changed(bg, g)
    assert _changed(bh, head) == train_extra
    assert torch.isfinite(logged["rubi_loss"])


@pytest.mark.parametrize("train_extra", [True, False])
def test_learned_mixin_step_freezes_g_and_trains_gate_only_if_asked(train_extra):
    f, g, of, _ = _nets()
    gate = torch.nn.Linear(f.feature_dim, 1)
    og = torch.optim.Adam(gate.parameters(), 1e-3) if train_extra else None
    bf, g_state, bgate = _params(f), _state(g), _params(gate)
    logged = learned_mixin_step(f, g, gate, of, og)(_batch())
    assert _changed(bf, f)
    assert all(
        torch.equal(v, g_state[k]) for k, v in g.state_dict().items()
    )  # weights and BN buffers
    assert _changed(bgate, gate) == train_extra
    assert 0 <= float(logged["entropy"]) <= float(torch.log(torch.tensor(10.0))) + 1e-5


def test_entropy_weight_changes_f_update():
    def run(w):
        f, g, of, _ = _nets()
        torch.manual_seed(1)
        gate = torch.nn.Linear(f.feature_dim, 1)
        learned_mixin_step(f, g, gate, of, None, entropy_weight=w)(_batch())
        return list(f.parameters())

    assert any(not torch.allclose(a, b, atol=1e-7) for a, b in zip(run(0.0), run(5.0)))


def test_bad_arguments_name_the_argument():
    f, g, of, og = _nets()
    with pytest.raises(ValueError, match="sigma"):
        rebias_step(f, g, of, og, sigma=0.0)
    with pytest.raises(ValueError, match="estimator"):
        rebias_step(f, g, of, og, estimator="nope")
    with pytest.raises(ValueError, match="question_weight"):
        rubi_step(f, g, torch.nn.Linear(16, 10), of, og, None, question_weight=-1)
    with pytest.raises(ValueError, match="entropy_weight"):
        learned_mixin_step(f, g, torch.nn.Linear(16, 1), of, None, entropy_weight=-0.1)


def test_rebias_biased_estimator_runs():
    f, g, of, og = _nets()
    logged = rebias_step(f, g, of, og, estimator="biased")(_batch())
    assert float(logged["hsic"]) > 0


# ------------------------------------------------ chapter 05's grid (issue 31, items 3 and 5)
def _grid_params(profile):
    from helpers.book.params import profile_values, validate
    from helpers.book.runner import NOTEBOOKS
    from helpers.book.sweep import notebook_defaults

    src = NOTEBOOKS / "05_rebias.ipynb"
    return validate("05_rebias", {**notebook_defaults(src), **profile_values("05_rebias", profile)})


@pytest.mark.parametrize("profile", ["smoke", "quick", "full"])
def test_lambda_is_chosen_on_two_seeds_that_are_never_reported(profile):
    from helpers.methods import rebias_grid as G

    p = _grid_params(profile)
    G.check_grid(p)
    reported = set(G.seeds(p)) | set(G.seeds(p, baseline=True))
    cells = G.selection_cells(p)
    assert not reported & {c["seed"] for c in cells}
    assert not reported & set(G.selection_seeds(p))
    if len(p["lambdas"]) > 1:
        assert len(set(G.selection_seeds(p))) >= 2
        assert len(cells) == len(p["lambdas"]) * p["n_select_seeds"]
        assert {c["seed"] for c in cells} == set(G.selection_seeds(p))
    else:  # a single candidate (full: λ = 1 as published): nothing to choose, nothing trained
        assert cells == []
        assert G.chosen_lambda({}, p["lambdas"]) == p["lambdas"][0]


def test_selection_seeds_stay_disjoint_for_every_seed_count():
    from helpers.methods import rebias_grid as G

    for seed in (0, 7, 2**32 - 1):
        p = {"seed": seed, "n_seeds": 10, "baseline_seeds": 10, "n_select_seeds": 10}
        assert not set(G.seeds(p)) & set(G.selection_seeds(p))
        assert all(0 <= s < 2**32 for s in G.selection_seeds(p))


def test_overlapping_selection_seeds_are_refused():
    from helpers.methods import rebias_grid as G

    p = dict(_grid_params("smoke"))
    p["n_seeds"], p["seed"] = 10, 0
    G.check_grid(p)
    G.SELECT_OFFSET, old = 3, G.SELECT_OFFSET
    try:
        with pytest.raises(ValueError, match="selection seeds"):
            G.check_grid(p)
    finally:
        G.SELECT_OFFSET = old


def test_chosen_lambda_is_the_best_mean_over_seeds():
    from helpers.methods import rebias_grid as G

    assert G.chosen_lambda({1.0: 0.30, 5.0: 0.32}) == 5.0
    assert G.chosen_lambda({1.0: 0.30, 5.0: 0.30}) == 1.0  # a tie: the first candidate


def test_full_profile_runs_the_papers_baselines_and_the_fix_as_named_variants():
    """Item 5: the reference code behind Table 1 never trains RUBi's head / LearnedMixin's gate."""
    from helpers.methods import rebias_grid as G

    p = _grid_params("full")
    assert p["train_extra_layers"] is False
    assert {"rubi", "learned_mixin", "rubi_fix", "learned_mixin_fix"} <= set(p["methods"])
    assert not G.extra_layers_trained(p, "rubi")
    assert not G.extra_layers_trained(p, "learned_mixin")
    assert G.extra_layers_trained(p, "rubi_fix") and G.extra_layers_trained(p, "learned_mixin_fix")
    assert G.base_method("learned_mixin_fix") == "learned_mixin"
    assert "fix" in G.NAMES["rubi_fix"] and "fix" in G.NAMES["learned_mixin_fix"]
    cells = G.grid_cells(p, 1.0)
    assert {c["method"] for c in cells} >= {"rubi_fix", "learned_mixin_fix"}


def test_a_fix_variant_keys_its_own_extra_layer_setting():
    from helpers.book.chapter import ChapterRun
    from helpers.methods import rebias_grid as G

    p = _grid_params("full")
    run = ChapterRun("05_rebias", p, torch.device("cpu"), "code")
    fix = G.cell_config(run, "rubi_fix", 0.99, 0, None)
    paper = G.cell_config(run, "rubi", 0.99, 0, None)
    assert fix["train_extra_layers"] is True and paper["train_extra_layers"] is False
    flipped = ChapterRun(
        "05_rebias", {**p, "train_extra_layers": True}, torch.device("cpu"), "code"
    )
    assert G.cell_config(flipped, "rubi_fix", 0.99, 0, None) == fix
