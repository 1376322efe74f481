"""The debiasing steps against hand computations on tiny batches: a linear model with fixed weights,
plain SGD, so each update is W ← W − lr · Σ_i g_i x_iᵀ with g_i = ∂loss/∂logits_i written out by
hand (softmax CE: ∂CE_i/∂z_i = p_i − onehot(y_i))."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from helpers.methods import debias as D
from helpers.methods import group_methods as G
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import Batch, fit, weighted

X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.5]])
Y = np.array([0, 1, 0, 1])


def _linear(w, b) -> nn.Linear:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(w, dtype=torch.float32))
        layer.bias.copy_(torch.tensor(b, dtype=torch.float32))
    return layer


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _batch(idx, x=X, y=Y, bias=None) -> Batch:
    return Batch(
        torch.tensor(x, dtype=torch.float32),
        torch.tensor(y),
        None if bias is None else torch.tensor(bias),
        {},
        torch.tensor(idx),
    )


def _sgd_update(w, b, g, x, lr):
    """Hand SGD step of a linear layer given per-sample logit gradients ``g`` (B × classes)."""
    return w - lr * g.T @ x, b - lr * g.sum(0)


def _close(layer: nn.Linear, w, b, tol=1e-6):
    assert np.allclose(layer.weight.detach().numpy(), w, atol=tol)
    assert np.allclose(layer.bias.detach().numpy(), b, atol=tol)


# ---------------------------------------------------------------------------------------------- LfF
def test_lff_step_matches_hand_computation():
    wd, bd = np.array([[0.5, -0.2], [0.1, 0.3]]), np.array([0.0, 0.1])
    wb, bb = np.array([[-0.3, 0.4], [0.2, -0.1]]), np.array([0.2, 0.0])
    deb, bia = _linear(wd, bd), _linear(wb, bb)
    lr, q, alpha = 0.5, 0.7, 0.7
    y_train = torch.tensor([0, 1, 0, 1, 0, 1])  # rows 4, 5 are not in the first batch
    ema_d, ema_b = D.LossEMA(y_train, alpha), D.LossEMA(y_train, alpha)
    opts = [torch.optim.SGD(deb.parameters(), lr), torch.optim.SGD(bia.parameters(), lr)]
    step = D.lff_step(deb, bia, opts, ema_d, ema_b, q=q)
    out = step(_batch([0, 1, 2, 3]))

    n = len(Y)
    pd, pb = _softmax(X @ wd.T + bd), _softmax(X @ wb.T + bb)
    ce_d, ce_b = -np.log(pd[range(n), Y]), -np.log(pb[range(n), Y])
    # first visit: the EMA is the loss itself; normalised by its class maximum over the set
    max_d = np.array([ce_d[c == Y].max() for c in (0, 1)])
    max_b = np.array([ce_b[c == Y].max() for c in (0, 1)])
    nd, nb = ce_d / max_d[Y], ce_b / max_b[Y]
    w = nb / (nb + nd)
    py_b = pb[range(n), Y]
    loss = np.mean(q * py_b**q * ce_b) + np.mean(w * ce_d)
    assert float(out["loss"]) == pytest.approx(loss, abs=1e-6)
    assert float(out["mean_weight"]) == pytest.approx(w.mean(), abs=1e-6)
    onehot = np.eye(2)[Y]
    g_b = (q * py_b**q)[:, None] * (pb - onehot) / n  # GCE: p_y^q is a constant of the gradient
    g_d = w[:, None] * (pd - onehot) / n
    wd1, bd1 = _sgd_update(wd, bd, g_d, X, lr)
    wb1, bb1 = _sgd_update(wb, bb, g_b, X, lr)
    _close(deb, wd1, bd1)
    _close(bia, wb1, bb1)

    # second step on rows 2..5: rows 2, 3 average, rows 4, 5 are first visits
    x2 = np.array([[1.0, 1.0], [-1.0, 0.5], [0.3, -0.7], [2.0, 0.0]])
    y2 = np.array([0, 1, 0, 1])
    step(_batch([2, 3, 4, 5], x2, y2))
    ce_d2 = -np.log(_softmax(x2 @ wd1.T + bd1)[range(4), y2])
    expected = np.concatenate([ce_d[:2], alpha * ce_d[2:] + (1 - alpha) * ce_d2[:2], ce_d2[2:]])
    assert np.allclose(ema_d.values.numpy(), expected, atol=1e-6)


def test_loss_ema_first_visit_average_and_class_maximum():
    y = torch.tensor([0, 0, 1, 1, 2])
    ema = D.LossEMA(y, alpha=0.7, num_classes=3)
    out = ema.update(torch.tensor([0, 2]), torch.tensor([2.0, 4.0]))
    assert ema.values.tolist() == pytest.approx([2.0, 0.0, 4.0, 0.0, 0.0])  # first visit: the loss
    assert out.tolist() == pytest.approx([1.0, 1.0])  # each divided by its class maximum
    out = ema.update(torch.tensor([0, 1, 4]), torch.tensor([1.0, 4.0, 0.5]))
    assert ema.values.tolist() == pytest.approx([0.7 * 2.0 + 0.3 * 1.0, 4.0, 4.0, 0.0, 0.5])
    assert out.tolist() == pytest.approx([1.7 / 4.0, 1.0, 1.0])  # class 0's maximum is now 4


def test_lff_weights_and_gce():
    gen = torch.Generator().manual_seed(0)
    lb, ld = torch.rand(100, generator=gen) * 5, torch.rand(100, generator=gen) * 5
    lb[0] = ld[0] = 0
    w = D.lff_weights(lb, ld)
    assert ((w >= 0) & (w <= 1)).all() and w[0] == 0
    assert w[1] == pytest.approx(float(lb[1] / (lb[1] + ld[1])))
    logits = torch.randn(8, 3, generator=gen)
    y = torch.randint(0, 3, (8,), generator=gen)
    p = torch.softmax(logits, 1)[torch.arange(8), y]
    assert torch.allclose(D.gce_loss(logits, y, 0.7), -torch.log(p) * p**0.7 * 0.7, atol=1e-6)
    # its gradient is q times that of the true GCE (1 - p_y^q) / q
    z = logits.clone().requires_grad_(True)
    D.gce_loss(z, y, 0.7).sum().backward()
    z_true = logits.clone().requires_grad_(True)
    pt = torch.softmax(z_true, 1)[torch.arange(8), y]
    ((1 - pt**0.7) / 0.7).sum().backward()
    assert torch.allclose(z.grad, 0.7 * z_true.grad, atol=1e-6)


# ---------------------------------------------------------------------------------------------- JTT
def test_jtt_error_set_weights_and_upsampling():
    model = _linear([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0])  # predicts argmax(x)
    data = TensorData(torch.tensor(X, dtype=torch.float32), torch.tensor([0, 0, 1, 1]))
    # argmax rows: [1,0]->0, [0,1]->1, [1,1]->0 (tie: first), [-1,.5]->1
    wrong = D.jtt_error_set(model, data)
    assert wrong.tolist() == [False, True, True, False]
    assert D.jtt_weights(wrong, 3).tolist() == [1.0, 3.0, 3.0, 1.0]
    sample = D.jtt_upsampler(wrong, 3)  # up-sampled set: 1 + 3 + 3 + 1 = 8 rows
    gen = torch.Generator().manual_seed(0)
    first, second = sample(4, gen), sample(4, gen)  # two fit epochs of 4 make one pass of 8
    counts = torch.bincount(torch.cat([first, second]), minlength=4).tolist()
    assert counts == [1, 3, 3, 1]  # without replacement: exactly the copies
    # a new generator (a new fit call) restarts the stream: same seed, same order
    assert torch.equal(sample(4, torch.Generator().manual_seed(0)), first)
    assert D.jtt_auto_upweight(torch.tensor([True, False, False, False, False])) == 4


def test_chapter06_weighted_jtt_sampler_share():
    wrong = torch.tensor([True, False, False, True, False])
    order = weighted(G.jtt_weights(wrong, 20))(5000, torch.Generator().manual_seed(0))
    assert float(wrong[order].float().mean()) == pytest.approx(40 / 43, abs=0.02)


# ----------------------------------------------------------------------------------------- GroupDRO
def test_groupdro_rule_hand_computed():
    dro = D.GroupDRO(4, eta=0.5)
    per = torch.tensor([1.0, 3.0, 2.0, 0.5, 1.5])
    groups = torch.tensor([0, 0, 1, 3, 3])  # group 2 absent: loss 0
    loss = dro(per, groups)
    gl = np.array([2.0, 2.0, 0.0, 1.0])
    q = 0.25 * np.exp(0.5 * gl)
    q /= q.sum()
    assert dro.q.numpy() == pytest.approx(q, abs=1e-6)
    assert float(loss) == pytest.approx(float(q @ gl), abs=1e-6)
    dro(per, groups)  # the weights compound
    q2 = q * np.exp(0.5 * gl)
    assert dro.q.numpy() == pytest.approx(q2 / q2.sum(), abs=1e-6)
    # generalisation adjustment C / sqrt(n_g) moves q, not the loss's gradient
    adj = D.GroupDRO(4, eta=0.5, adjustment=1.0, group_counts=torch.tensor([4, 1, 1, 4]))
    adj(per, groups)
    qa = 0.25 * np.exp(0.5 * (gl + np.array([0.5, 1.0, 1.0, 0.5])))
    assert adj.q.numpy() == pytest.approx(qa / qa.sum(), abs=1e-6)


def test_groupdro_step_update_hand_computed():
    w0, b0 = np.array([[0.5, -0.2], [0.1, 0.3]]), np.array([0.0, 0.1])
    model, lr, eta = _linear(w0, b0), 0.5, 0.1
    bias = np.array([0, 0, 1, 1])
    dro = D.GroupDRO(4, eta)
    step = D.groupdro_step(model, torch.optim.SGD(model.parameters(), lr), dro, num_biases=2)
    y = np.array([0, 1, 0, 0])  # groups [0, 2, 1, 1]
    out = step(_batch([0, 1, 2, 3], X, y, bias))
    g = y * 2 + bias
    p = _softmax(X @ w0.T + b0)
    ce = -np.log(p[range(4), y])
    n_g = np.array([(g == k).sum() for k in range(4)])
    gl = np.array([ce[g == k].sum() / max(n_g[k], 1) for k in range(4)])
    q = 0.25 * np.exp(eta * gl)
    q /= q.sum()
    assert float(out["loss"]) == pytest.approx(float(q @ gl), abs=1e-6)
    assert dro.q.numpy() == pytest.approx(q, abs=1e-6)
    coef = q[g] / n_g[g]  # ∂loss/∂CE_i = q_g / n_g
    w1, b1 = _sgd_update(w0, b0, coef[:, None] * (p - np.eye(2)[y]), X, lr)
    _close(model, w1, b1)


# ----------------------------------------------------------------------- re-weighting / re-sampling
def test_group_weights_hand_computed():
    groups = torch.tensor([0, 0, 0, 1, 3, 3])  # n_g = 3, 1, 0, 2
    w = D.group_weights(groups, 4)
    # 1/n_g = 1/3, 1, 0, 1/2 (sum 11/6), scaled to sum 4 over groups: x 24/11
    per_group = [8 / 11, 24 / 11, 0.0, 12 / 11]
    assert w.tolist() == pytest.approx([per_group[g] for g in groups.tolist()])
    assert sum(per_group) == pytest.approx(4.0)


def test_reweighted_step_update_hand_computed():
    w0, b0 = np.array([[0.5, -0.2], [0.1, 0.3]]), np.array([0.0, 0.1])
    model, lr = _linear(w0, b0), 0.5
    weights = torch.tensor([9.0, 0.5, 1.0, 2.0, 3.0, 4.0])  # one per training row
    step = D.reweighted_step(model, torch.optim.SGD(model.parameters(), lr), weights)
    idx = [3, 1, 4, 0]
    out = step(_batch(idx))
    p = _softmax(X @ w0.T + b0)
    ce = -np.log(p[range(4), Y])
    wi = weights.numpy()[idx]
    assert float(out["loss"]) == pytest.approx(float(np.mean(wi * ce)), abs=1e-6)
    w1, b1 = _sgd_update(w0, b0, wi[:, None] * (p - np.eye(2)[Y]) / 4, X, lr)
    _close(model, w1, b1)


def test_group_balanced_sampler():
    groups = torch.tensor([0, 0, 0, 0, 0, 0, 1, 3, 3])
    sample = D.group_balanced(groups, 4)
    order = sample(30_000, torch.Generator().manual_seed(0))
    share = torch.bincount(groups[order], minlength=4).float() / len(order)
    assert share.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3], abs=0.015)
    again = sample(30_000, torch.Generator().manual_seed(0))
    assert torch.equal(order, again)


# ------------------------------------------------------------------------------------ determinism
def _toy_images(n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    b = torch.where(torch.rand(n, generator=gen) < 0.8, y, torch.randint(0, 3, (n,), generator=gen))
    x = torch.randn(n, 3, 4, 4, generator=gen) + b[:, None, None, None].float()
    return TensorData(x, y, b)


def _tiny_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(48, 3))


def _train(method, seed, train):
    seed_everything(seed)
    kw = {}
    if method == "jtt":
        ident = D.build("erm", _tiny_net, train, lr=0.05, num_classes=3)
        fit(train, ident.step, epochs=1, batch_size=8, modules=ident.modules["model"], seed=seed)
        kw = {"error_set": D.jtt_error_set(ident.modules["model"], train), "upweight": 4}
    setup = D.build(method, _tiny_net, train, lr=0.05, num_classes=3, num_biases=3, **kw)
    h = fit(
        train,
        setup.step,
        epochs=2,
        batch_size=8,
        modules=list(setup.modules.values()),
        seed=seed,
        sampler=setup.sampler,
        progress=False,
    )
    return setup, h


@pytest.mark.parametrize("method", D.METHODS)
def test_same_seed_same_result(method):
    train = _toy_images()
    a, ha = _train(method, 0, train)
    b, hb = _train(method, 0, train)
    for name in a.modules:
        for k, v in a.modules[name].state_dict().items():
            assert torch.equal(v, b.modules[name].state_dict()[k]), (method, name, k)
    assert [r["loss"] for r in ha.rows] == [r["loss"] for r in hb.rows]
    c, _ = _train(method, 1, train)
    assert not torch.equal(a.modules["model"][1].weight, c.modules["model"][1].weight)


def test_chapter06_heads_share_the_implementation():
    assert G.gce_loss is D.gce_loss and G.lff_weights is D.lff_weights
    assert G.jtt_weights is D.jtt_weights and G.jtt_error_set is D.jtt_error_set


# -------------------------------------------------------------------------------- invalid input
def test_invalid_input_names_the_parameter():
    y = torch.tensor([0, 1])
    net = _linear(np.eye(2), np.zeros(2))
    opt = torch.optim.SGD(net.parameters(), 0.1)
    cases = [
        ("q", lambda: D.gce_loss(torch.zeros(2, 2), y, 0.0)),
        ("q", lambda: D.lff_step(net, net, opt, D.LossEMA(y, 0.7), D.LossEMA(y, 0.7), q=1.5)),
        ("alpha", lambda: D.LossEMA(y, 1.0)),
        ("y must lie", lambda: D.LossEMA(y, 0.5, num_classes=1)),
        ("eta", lambda: D.GroupDRO(4, eta=0.0)),
        ("num_groups", lambda: D.GroupDRO(0)),
        ("group_counts", lambda: D.GroupDRO(4, adjustment=1.0)),
        ("num_biases", lambda: D.groupdro_step(net, opt, D.GroupDRO(4), num_biases=3)),
        ("bias", lambda: D.group_ids(y, None, 2)),
        ("bias must lie", lambda: D.group_counts(y, torch.tensor([0, 5]), 2, 2)),
        ("num_groups", lambda: D.group_weights(y, 1)),
        ("upweight", lambda: D.jtt_weights(torch.tensor([True]), 0.5)),
        ("upweight", lambda: D.jtt_upsampler(torch.tensor([True, False]), 2.5)),
        ("multiplicity", lambda: D.upsampled(torch.tensor([0.5, 1.0]))),
        ("multiplicity", lambda: D.upsampled(torch.tensor([0, 0]))),
        ("wrong", lambda: D.jtt_auto_upweight(torch.tensor([False, False]))),
        ("weights", lambda: D.reweighted_step(net, opt, torch.ones(2, 2))),
        ("method", lambda: D.build("dfr", _tiny_net, _toy_images(), lr=0.1, num_classes=3)),
        (
            "num_biases",
            lambda: D.build("groupdro", _tiny_net, _toy_images(), lr=0.1, num_classes=3),
        ),
        ("error_set", lambda: D.build("jtt", _tiny_net, _toy_images(), lr=0.1, num_classes=3)),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()
    no_bias = TensorData(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(ValueError, match="bias labels"):
        D.build("reweight", lambda: net, no_bias, lr=0.1, num_classes=2, num_biases=2)
    step = D.groupdro_step(net, opt, D.GroupDRO(4), num_biases=2)
    with pytest.raises(ValueError, match="bias labels"):
        step(_batch([0, 1, 2, 3]))
    assert math.isfinite(float(D.weighted_ce(torch.zeros(2, 2), y, torch.ones(2))))


# --------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("method", D.METHODS)
def test_cuda_steps_do_not_sync_with_the_host(method):
    """The syncs of one epoch must not grow with its number of steps (state stays on the GPU)."""
    import warnings

    from helpers.train import to_device

    def syncs(n: int) -> int:
        train = to_device(_toy_images(n), "cuda")
        kw = {"error_set": torch.arange(n) % 5 == 0, "upweight": 3} if method == "jtt" else {}
        setup = D.build(method, _tiny_net, train, lr=0.05, num_classes=3, num_biases=3, **kw)
        modules = list(setup.modules.values())

        def run():
            kw = {"sampler": setup.sampler, "progress": False}
            fit(train, setup.step, epochs=1, batch_size=8, modules=modules, seed=0, **kw)

        run()  # warm-up: lazy initialisation, the first step's one-off copies
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    assert syncs(8 * 8) == syncs(8 * 2)
