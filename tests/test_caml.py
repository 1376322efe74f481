import math

import pytest
import torch
import torch.nn.functional as F

from helpers.methods import caml as C
from helpers.models import Adapter, MarginHead
from helpers.tensordata import TensorData
from helpers.train import TrainConfig, predict


def test_zero_margins_equal_scaled_cosine_ce():
    gen = torch.Generator().manual_seed(0)
    cos = torch.rand(16, 2, generator=gen) * 2 - 1
    y = torch.randint(0, 2, (16,), generator=gen)
    loss = C.adaptive_margin_loss(cos, y, torch.zeros(16, 2), scale=8.0)
    assert torch.allclose(loss, F.cross_entropy(8.0 * cos, y), atol=1e-5)
    # a positive margin on the true class only raises the loss
    m = torch.zeros(16, 2)
    m[torch.arange(16), y] = 0.5
    assert C.adaptive_margin_loss(cos, y, m, scale=8.0) > loss


def test_angular_margin_formula_and_fallback():
    cos = torch.tensor([[0.5, -0.99]])
    m = torch.tensor([[0.3, 0.5]])
    z = C.angular_margin_logits(cos, m, scale=1.0)
    assert z[0, 0] == pytest.approx(math.cos(math.acos(0.5) + 0.3), abs=1e-5)
    # theta + m passes pi: ArcFace's fallback cos - m sin(pi - m)
    assert z[0, 1] == pytest.approx(-0.99 - 0.5 * math.sin(math.pi - 0.5), abs=1e-5)


def test_sample_margins_mean_and_noise():
    table = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    c = torch.tensor([0, 1, 1])
    assert torch.allclose(C.sample_margins(table, c, 0.0), 1 - table[c])
    gen = torch.Generator().manual_seed(1)
    many = C.sample_margins(table, torch.zeros(20000, dtype=torch.long), 0.2, gen)
    assert many.mean(0).tolist() == pytest.approx([0.1, 0.9], abs=0.01)
    assert many.std(0).tolist() == pytest.approx([0.2, 0.2], abs=0.01)
    with pytest.raises(ValueError, match="sigma"):
        C.sample_margins(table, c, -1.0)


def test_pseudo_groups_table_and_nmi():
    gen = torch.Generator().manual_seed(0)
    b = torch.arange(200) % 2
    y = torch.where(torch.rand(200, generator=gen) < 0.9, b, 1 - b)  # target agrees with bias 90%
    x = torch.randn(200, 2, generator=gen) * 0.1 + 5 * b[:, None].float()  # clusters = bias
    out = C.pseudo_groups(x, y, b, k=2)
    assert out["nmi_bias"] == pytest.approx(1.0)
    assert out["nmi_target"] < 0.8
    assert torch.allclose(out["table"].sum(1), torch.ones(2))
    c0 = out["clusters"] == out["clusters"][0]
    assert out["table"][out["clusters"][0], 1].item() == pytest.approx(y[c0].float().mean().item())
    with pytest.raises(ValueError, match="k"):
        C.pseudo_groups(x, y, b, k=0)


def _toy(n=300, seed=0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    b = torch.where(torch.rand(n, generator=gen) < 0.9, y, 1 - y)
    x = torch.randn(n, 6, generator=gen) + torch.stack([y, b], 1).float().repeat(1, 3) * 2
    return TensorData(x, y, b)


def test_train_caml_deterministic_and_checks():
    tr, va = _toy(), _toy(80, 1)
    pg = C.pseudo_groups(tr.x, tr.y, tr.bias, k=2)
    preds = []
    for _ in range(2):
        torch.manual_seed(0)
        head = MarginHead(6)
        cfg = TrainConfig(epochs=3, batch_size=64, lr=1e-2, weight_decay=1e-4, seed=3)
        result = C.train_caml(head, tr, va, pg["clusters"], pg["table"], cfg, sigma=0.2, scale=8)
        assert 1 <= result.best_epoch <= 3
        preds.append(predict(head, va))
    assert torch.equal(preds[0], preds[1])
    assert (preds[0].argmax(1) == va.y).float().mean() > 0.7
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0, batch_size=64, lr=1e-2)
    with pytest.raises(ValueError, match="clusters"):
        C.train_caml(head, tr, va, pg["clusters"][:5], pg["table"], cfg, sigma=0.2, scale=8)


def test_stage1_selects_by_train_accuracy():
    tr = _toy()
    torch.manual_seed(0)
    a = Adapter(6)
    result = C.train_adapter(
        a, tr, TrainConfig(epochs=4, batch_size=64, lr=1e-2, weight_decay=0.1, seed=0)
    )
    accs = result.history.column("select_acc")
    assert result.best_epoch == 1 + max(range(len(accs)), key=lambda i: (accs[i], -i))
    assert Adapter(6).features(tr.x).norm(dim=1).allclose(torch.ones(len(tr)), atol=1e-5)
    with pytest.raises(ValueError, match="weight_decay"):
        TrainConfig(epochs=1, batch_size=64, lr=1e-2, weight_decay=-1)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(epochs=1, batch_size=64, lr=0.0)
