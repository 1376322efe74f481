import pytest
import torch
import torch.nn.functional as F

from helpers.methods import fisher as fi
from helpers.models import FusionLeNet
from helpers.train import Batch


def _batch(b=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 28, 28, generator=g)
    c = torch.rand(b, 3, generator=g)
    y = torch.randint(0, 10, (b,), generator=g)
    return x, c, y


def _model(seed=0):
    torch.manual_seed(seed)
    return FusionLeNet()


def test_repeat_rows_is_consecutive_copies():
    t = torch.arange(6.0).reshape(3, 2)
    r = fi.repeat_rows(t, 3)
    assert r.shape == (9, 2)
    assert torch.equal(r[3:6], t[1].expand(3, 2)) and torch.equal(r[0], t[0])


def test_knn_scale_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    u = fi.repeat_rows(torch.rand(4, 5, generator=g), 3)  # duplicates at distance 0, as in training
    k = 5
    got = fi.knn_scale(u, k)
    expected = []
    for r in range(len(u)):
        dists = sorted(
            float(torch.sqrt(((u[r] - u[s]) ** 2).sum())) for s in range(len(u)) if s != r
        )
        expected.append(sum(dists[:k]) / k)
    assert torch.allclose(got, torch.tensor(expected), atol=1e-5)
    # the two duplicates of each row are among its neighbours, at distance 0
    assert float(fi.knn_scale(u, 2).max()) < 1e-3


def test_knn_value_larger_than_expanded_batch_is_refused():
    with pytest.raises(ValueError, match="knn_value"):
        fi.knn_scale(torch.rand(10, 3), 10)
    cfg = fi.FisherConfig(n_samples=10, knn_value=219)
    with pytest.raises(ValueError, match="knn_value"):
        cfg.check_batch_size(16)
    cfg.check_batch_size(22)  # 22·10 − 1 = 219 rows: just enough
    assert cfg.min_batch() == 22


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("optim_method", "maximise"),
        ("estimation", "std"),
        ("influence", "swapped"),
        ("noise", "uniform"),
        ("n_samples", 0),
        ("lambda_image", -1.0),
    ],
)
def test_bad_options_name_the_parameter(field, value):
    with pytest.raises(ValueError, match=field):
        fi.FisherConfig(**{field: value})


@pytest.mark.parametrize("influence", ["reference", "paper"])
@pytest.mark.parametrize("estimation", ["var", "ent"])
def test_terms_are_finite_and_positive(influence, estimation):
    x, c, y = _batch()
    model = _model()
    cfg = fi.FisherConfig(knn_value=20, influence=influence, estimation=estimation)
    torch.manual_seed(0)
    logits = model(x, c)
    t = fi.fisher_terms(model, x, c, logits, cfg)
    for name in ("fisher_image", "fisher_colour", "reg_image", "reg_colour", "influence_loss"):
        assert torch.isfinite(t[name]), name
    # the swapped BCE can be negative, and so F under 'ent'
    if influence == "paper" or estimation == "var":
        assert t["fisher_image"] > 0 and t["fisher_colour"] > 0


def test_reference_influence_is_linear_in_perturbed_logits():
    p = F.softmax(torch.randn(6, 10), 1)
    z = torch.randn(6, 10, requires_grad=True)
    (g,) = torch.autograd.grad(fi.influence_loss(p, z, "reference"), z)
    assert torch.allclose(g, -p / p.numel(), atol=1e-7)
    (g_paper,) = torch.autograd.grad(fi.influence_loss(p, z, "paper"), z)
    assert torch.allclose(g_paper, (torch.sigmoid(z) - p) / p.numel(), atol=1e-7)


def test_colour_fisher_has_closed_form_under_reference_loss():
    """With the swapped BCE, ∂L/∂c̃_r = −W_cᵀ p_b(r) / (10N): the colour information depends only on
    W_c and p."""
    x, c, y = _batch(b=8)
    model = _model()
    cfg = fi.FisherConfig(knn_value=20, n_samples=3)
    logits = model(x, c)
    t = fi.fisher_terms(model, x, c, logits, cfg, create_graph=False)
    p = F.softmax(logits, 1).detach()
    n_rows = len(x) * cfg.n_samples
    grad = -(p @ model.colour_weights().detach()) / (10 * n_rows)
    assert torch.allclose(t["fisher_colour"], grad.pow(2).sum(1).mean(), rtol=1e-4)


def test_regulariser_gradients_reach_the_parameters_through_double_backward():
    x, c, y = _batch()
    model = _model()
    cfg = fi.FisherConfig(knn_value=20)
    logits = model(x, c)
    t = fi.fisher_terms(model, x, c, logits, cfg)
    model.zero_grad()
    t["reg_image"].backward()
    conv = model.image[0].weight.grad
    assert conv is not None and torch.isfinite(conv).all() and conv.abs().sum() > 0
    # with the logits detached, the image term still depends on the weights only through the input
    # gradient
    model.zero_grad()
    t2 = fi.fisher_terms(model, x, c, logits.detach(), cfg)
    t2["reg_image"].backward()
    assert model.image[0].weight.grad.abs().sum() > 0


def test_lambda_zero_step_equals_plain_cross_entropy():
    x, c, y = _batch()
    batch = Batch(x, y, None, {"colour": c}, torch.arange(len(y)))
    a, b = _model(3), _model(3)
    opt_a, opt_b = torch.optim.Adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), 1e-2)
    step = fi.fisher_step(a, opt_a, fi.FisherConfig(lambda_image=0.0, lambda_colour=0.0))
    logged = step(batch)
    loss = F.cross_entropy(b(x, c), y)
    opt_b.zero_grad()
    loss.backward()
    opt_b.step()
    assert torch.allclose(logged["loss"], loss.detach())
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert step.last_batch() == {}


def test_regularised_step_logs_reference_proportions_as_inverse_fisher_shares():
    x, c, y = _batch()
    batch = Batch(x, y, None, {"colour": c}, torch.arange(len(y)))
    model = _model()
    step = fi.fisher_step(
        model, torch.optim.SGD(model.parameters(), 0.0), fi.FisherConfig(knn_value=20)
    )
    torch.manual_seed(7)
    logged = step(batch)
    last = step.last_batch()
    # the reference's "image" proportion R_img/(R_img+R_col) with R = 1/F is the *colour* share of F
    f_img, f_col = float(logged["fisher_image"]), float(logged["fisher_colour"])
    assert last["logged_prop_image"] == pytest.approx(f_col / (f_img + f_col), rel=1e-4)
    assert float(logged["share_image"]) == pytest.approx(f_img / (f_img + f_col), rel=1e-5)
    assert float(logged["loss"]) > float(logged["ce"])


def test_measure_fisher_is_repeatable_and_keeps_the_rng_stream():
    x, c, y = _batch(b=48)
    from helpers.tensordata import TensorData

    data = TensorData(x, y, None, {"colour": c})
    model = _model()
    cfg = fi.FisherConfig(knn_value=20)
    torch.manual_seed(11)
    before = torch.rand(3)
    torch.manual_seed(11)
    m1 = fi.measure_fisher(model, data, cfg, batch_size=24, n_batches=2, seed=5)
    after = torch.rand(3)
    m2 = fi.measure_fisher(model, data, cfg, batch_size=24, n_batches=2, seed=5)
    assert torch.equal(before, after) and m1 == m2 and 0 < m1["share_image"] < 1


def test_moving_average_stop_follows_the_reference_rule():
    from helpers.train import History

    stop = fi.MovingAverageStop(patience=3, tol=1e-3)
    h = History()
    decisions = []
    for epoch, loss in enumerate([1.0, 0.5, 0.4, 0.39, 0.3905, 0.39], start=1):
        h.rows.append({"epoch": epoch, "loss": loss})
        decisions.append(stop.on_epoch_end(epoch, h.rows[-1], h))
    # epoch 4 (0-based 3 >= patience): |L4 − L1| / 3 = 0.203 → go on; epoch 5: |L5 − L2|/3 = 0.036 →
    # go on; epoch 6: |L6 − L3| / 3 = 0.0033 → go on with tol 1e-3
    assert decisions == [False] * 6
    h.rows.append({"epoch": 7, "loss": 0.3901})
    assert stop.on_epoch_end(7, h.rows[-1], h)  # |0.3901 − 0.39| / 3 < 1e-3


def test_chapter_schema_names_bad_parameters():
    from helpers.book.params import ParameterError, profile_values, validate

    chapter = "02_fisher_regularization"
    with pytest.raises(ParameterError, match="'optim_method'"):
        validate(chapter, {"optim_method": "maximise"}, partial=True)
    with pytest.raises(ParameterError, match="'noise'"):
        validate(chapter, {"noise": "uniform"}, partial=True)
    for profile in ("smoke", "quick", "full"):
        profile_values(chapter, profile)


# ------------------------------------------- the k-NN scale from the unique rows (the faster step)
def _expanded_scale(t: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The reference's definition on the expanded batch, with exact distances (float64, no
    matrix-product form, so the zero distances between copies are exactly zero)."""
    u = fi.repeat_rows(t.double(), n)
    d = torch.cdist(u, u, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    return d.topk(k, dim=1, largest=False).values.mean(dim=1)


@pytest.mark.parametrize(
    ("b", "n", "k", "d"),
    [
        (128, 10, 219, 784),  # the reference's setting
        (16, 10, 3, 784),  # k < n − 1: only copies of the row's own sample
        (16, 10, 9, 3),  # k = n − 1
        (16, 10, 10, 3),  # one other sample, once
        (16, 10, 25, 3),  # q = 1 full sample, r = 6 copies of the next
        (16, 10, 159, 3),  # k = B·n − 1: every other row
        (9, 3, 26, 5),  # k = B·n − 1 with small n
        (2, 1, 1, 7),  # n = 1: no copies at all
    ],
)
def test_knn_scale_of_copies_equals_the_expanded_batch(b, n, k, d):
    g = torch.Generator().manual_seed(b * 1000 + k)
    t = torch.rand(b, d, generator=g, dtype=torch.float64)
    if b > 3:
        t[2] = t[3]  # two identical samples: their distance 0 sorts among the copies' zeros
    fast = fi.knn_scale_of_copies(t, n, k)
    exact = _expanded_scale(t, n, k)
    assert fast.shape == (b * n,)
    assert (fast - exact).abs().max().item() <= 1e-12 * max(1.0, exact.abs().max().item())


def test_knn_scale_of_copies_refuses_k_beyond_the_expanded_batch():
    with pytest.raises(ValueError, match="knn_value=30 exceeds the 29 other rows"):
        fi.knn_scale_of_copies(torch.rand(3, 4), 10, 30)


def test_float32_scale_is_closer_to_exact_than_the_expanded_float32_product():
    """The old expanded float32 computation turned the copies' zero distances into rounding
    noise (cdist's matrix-product form); the unique-row scale is exact up to float32 rounding."""
    t = torch.rand(32, 784, generator=torch.Generator().manual_seed(0))
    exact = _expanded_scale(t, 10, 219)
    fast_err = (fi.knn_scale_of_copies(t, 10, 219).double() - exact).abs().max().item()
    assert fast_err <= 1e-6 * exact.max().item()


@pytest.mark.parametrize("influence", ["reference", "paper"])
def test_regularised_loss_and_gradients_equal_the_expanded_computation(monkeypatch, influence):
    """Scale, loss and every parameter gradient of the regularised loss computed with the
    unique-row scale equal those with the expanded-batch scale (float64 model and data, same noise
    draws): the largest relative difference is below 1e-10."""
    torch.manual_seed(0)
    model = FusionLeNet().double()
    x = torch.rand(24, 1, 28, 28, dtype=torch.float64)
    c = torch.rand(24, 3, dtype=torch.float64)
    y = torch.randint(0, 10, (24,))
    cfg = fi.FisherConfig(n_samples=10, knn_value=219, influence=influence, lambda_image=1e-3)

    def run():
        torch.manual_seed(7)  # the same noise draws in both computations
        model.zero_grad(set_to_none=True)
        loss, _, terms = fi.regularized_loss(model, x, c, y, cfg)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss.detach(), terms["fisher_image"].detach(), grads

    # perturb builds its rows in float32 (as the training data are); keep float64 here
    def perturb64(t, cfg, scale_fn):
        u = fi.repeat_rows(t.detach(), cfg.n_samples)
        scale = scale_fn(t.detach(), cfg.n_samples, cfg.knn_value)[:, None]
        noisy = u + torch.randn_like(u) * scale
        return noisy.reshape(len(u), *t.shape[1:]).requires_grad_()

    monkeypatch.setattr(fi, "perturb", lambda t, cfg: perturb64(t, cfg, fi.knn_scale_of_copies))
    fast = run()
    monkeypatch.setattr(fi, "perturb", lambda t, cfg: perturb64(t, cfg, _expanded_scale))
    exact = run()
    for a, b in zip(fast, exact):
        assert torch.isfinite(a).all()
        rel = ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()
        assert rel < 1e-10, rel
