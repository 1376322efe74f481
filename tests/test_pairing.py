"""Paired training loss and step."""

import pytest
import torch
import torch.nn.functional as F

from helpers.methods import pairing as P
from helpers.models import LeNet
from helpers.tensordata import TensorData
from helpers.train import fit


def _logits(seed=0, n=8):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, 10, generator=g),
        torch.randn(n, 10, generator=g),
        torch.randint(0, 10, (n,), generator=g),
    )


def test_loss_is_twice_ce_when_copy_equals_original_and_lambda_zero():
    o, _, y = _logits()
    for kind in P.CONSISTENCY:
        loss, parts = P.paired_loss(o, o.clone(), y, 0.0, kind)
        assert torch.allclose(loss, 2 * F.cross_entropy(o, y))
        assert float(parts["consistency"]) == pytest.approx(0.0, abs=1e-6)


def test_consistency_variants():
    o, o2, y = _logits()
    assert torch.allclose(P.consistency_loss(o, o2, "l2"), ((o - o2) ** 2).sum())
    assert torch.allclose(P.consistency_loss(o, o2, "l1"), (o - o2).abs().sum() ** 2)
    p, q = o.softmax(1), o2.softmax(1)
    assert torch.allclose(
        P.consistency_loss(o, o2, "kl"), (p * (p.log() - q.log())).sum(1).mean(), atol=1e-6
    )
    loss, parts = P.paired_loss(o, o2, y, 0.5, "l2")
    assert torch.allclose(
        loss, F.cross_entropy(o, y) + F.cross_entropy(o2, y) + 0.5 * ((o - o2) ** 2).sum()
    )
    with pytest.raises(ValueError, match="consistency"):
        P.consistency_loss(o, o2, "l3")
    with pytest.raises(ValueError, match="lam"):
        P.paired_loss(o, o2, y, -1.0)


def test_paired_step_trains_and_is_deterministic(pure_background_digits):
    data = pure_background_digits()

    def train(seed):
        torch.manual_seed(0)
        m = LeNet()
        opt = torch.optim.SGD(m.parameters(), lr=0.01)
        h = fit(
            data,
            P.paired_step(m, opt, augment_mode="mixture", seed=seed),
            epochs=2,
            batch_size=16,
            modules=m,
            seed=0,
            progress=False,
        )
        return h, torch.cat([p.flatten() for p in m.parameters()])

    h1, w1 = train(0)
    h2, w2 = train(0)
    _, w3 = train(1)
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    assert {"loss", "ce", "ce_copy", "consistency", "acc", "acc_copy"} <= set(h1.rows[0])


def test_paired_step_bad_arguments():
    m = LeNet()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    with pytest.raises(ValueError, match="augment_mode"):
        P.paired_step(m, opt, augment_mode="clipped")
    with pytest.raises(ValueError, match="consistency"):
        P.paired_step(m, opt, consistency="l3")
    step = P.paired_step(m, opt)
    d = TensorData(torch.zeros(4, 3, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="mask"):
        fit(d, step, epochs=1, batch_size=4, modules=m, seed=0, progress=False)


def test_paired_dev_loss_scores_the_copies_only():
    """The reference's dev loss: cross-entropy on the re-backgrounded copies; the biased originals
    (which a shortcut model gets right) do not enter model selection."""
    torch.manual_seed(0)
    model = LeNet().eval()
    copies = torch.rand(16, 3, 28, 28)
    y = torch.randint(0, 10, (16,))
    a = TensorData(torch.rand(16, 3, 28, 28), y)
    b = TensorData(torch.zeros(16, 3, 28, 28), y)
    with torch.no_grad():
        expected = float(F.cross_entropy(model(copies), y))
    assert P.paired_dev_loss(model, a, copies) == pytest.approx(expected, rel=1e-6)
    assert P.paired_dev_loss(model, b, copies) == pytest.approx(expected, rel=1e-6)
