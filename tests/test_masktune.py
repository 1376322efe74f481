import pytest
import torch

from helpers.methods import masktune as mt
from helpers.tensordata import TensorData


def _map():
    # one 2×3 map: values chosen so every rule keeps a known set of pixels
    return torch.tensor([[[0.0, 0.1, 0.2], [0.3, 0.4, 1.0]]])


def test_official_rule_exact_pixels_and_ignores_non_positive():
    a = torch.zeros(1, 4, 4)
    a[0, 0, :] = torch.tensor([0.1, 0.1, 0.1, 0.1])
    a[0, 1, 0] = 1.0
    # positive values: four 0.1 and one 1.0 → μ = 0.28, σ = 0.36, τ = 1.0; 1.0 ≤ τ is kept (A > τ
    # erased)
    keep = mt.official_keep_mask(a)
    assert keep.all()
    keep1 = mt.official_keep_mask(a, n_std=1.0)  # τ = 0.64 → only the 1.0 pixel goes
    expected = torch.ones(1, 4, 4, dtype=torch.bool)
    expected[0, 1, 0] = False
    assert torch.equal(keep1, expected)
    # adding more zeros (or negatives) must not change μ, σ and hence the mask
    b = a.clone()
    b[0, 3, :] = -0.5
    assert torch.equal(mt.official_keep_mask(b, n_std=1.0), expected)
    # a map where the zeros WOULD matter if counted: with zeros included μ+σ would fall below 0.1
    c = torch.zeros(1, 10, 10)
    c[0, 0, :3] = torch.tensor([0.1, 0.1, 0.4])
    keep_c = mt.official_keep_mask(c, n_std=1.0)  # μ = 0.2, σ ≈ 0.141 → τ ≈ 0.341: only 0.4 erased
    assert (~keep_c).sum() == 1 and not keep_c[0, 0, 2]


def test_official_rule_all_zero_map_erases_nothing():
    assert mt.official_keep_mask(torch.zeros(2, 5, 5)).all()


def test_threshold_rule():
    keep = mt.threshold_keep_mask(_map(), 0.25)
    assert torch.equal(keep, torch.tensor([[[True, True, True], [False, False, False]]]))


def test_top_k_rule():
    a = torch.arange(10.0).view(1, 2, 5) / 9
    keep = mt.top_k_keep_mask(a, 0.2)  # the two largest of ten values go
    assert torch.equal(keep.flatten(), torch.tensor([True] * 8 + [False] * 2))


def test_mean_rule():
    keep = mt.mean_keep_mask(_map(), 1.0)  # mean = 2/6 = 0.333: 0.4 and 1.0 go
    assert torch.equal(keep, torch.tensor([[[True, True, True], [True, False, False]]]))
    keep2 = mt.mean_keep_mask(_map(), 2.0)  # 0.667: only 1.0 goes
    assert int((~keep2).sum()) == 1 and not keep2[0, 1, 2]


def test_dispatch_and_errors():
    m = _map()
    assert torch.equal(mt.keep_mask(m, "threshold", 0.25), mt.threshold_keep_mask(m, 0.25))
    assert torch.equal(mt.keep_mask(m), mt.official_keep_mask(m))
    with pytest.raises(ValueError, match="rule"):
        mt.keep_mask(m, "median", 0.5)
    with pytest.raises(ValueError, match="tau"):
        mt.threshold_keep_mask(m, 1.5)
    with pytest.raises(ValueError, match="k must"):
        mt.top_k_keep_mask(m, 0.0)
    with pytest.raises(ValueError, match="s must"):
        mt.mean_keep_mask(m, -1.0)
    with pytest.raises(ValueError, match="param"):
        mt.keep_mask(m, "top_k")
    with pytest.raises(ValueError, match="maps"):
        mt.official_keep_mask(torch.zeros(4, 4))


def test_apply_mask_keeps_labels_and_shapes_and_zeroes_all_channels():
    g = torch.Generator().manual_seed(0)
    data = TensorData(
        torch.rand(4, 3, 6, 6, generator=g) + 0.1,
        torch.tensor([0, 1, 1, 0]),
        torch.tensor([1, 0, 1, 0]),
        {"digit": torch.tensor([1, 7, 5, 2])},
    )
    keep = torch.rand(4, 6, 6, generator=g) > 0.3
    out = mt.apply_mask(data, keep)
    assert out.x.shape == data.x.shape
    assert torch.equal(out.y, data.y) and torch.equal(out.bias, data.bias)
    assert torch.equal(out.extras["digit"], data.extras["digit"])
    erased = ~keep
    for c in range(3):
        assert (out.x[:, c][erased] == 0).all()
        assert torch.equal(out.x[:, c][keep], data.x[:, c][keep])
    assert data.x.min() > 0  # the input is not modified in place
    assert mt.erased_fraction(keep) == pytest.approx(float(erased.float().mean()))
    with pytest.raises(ValueError, match="keep"):
        mt.apply_mask(data, keep[:, :5])


def test_finetune_is_one_epoch_and_changes_weights():
    from helpers.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = TensorData(torch.rand(40, 3, 28, 28), torch.randint(0, 2, (40,)))
    before = [p.detach().clone() for p in model.parameters()]
    h = mt.masktune_finetune(model, opt, data, batch_size=16, seed=0)
    assert len(h.rows) == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_each_fine_tuning_optimiser_owns_its_copy_of_the_erm_state():
    """Loading one ERM state dict into two SGD optimisers must not make them share momentum
    buffers (torch keeps same-device tensors on load): variant k would start from variant k-1."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    F.cross_entropy(net(x), y).backward()
    opt.step()
    state = opt.state_dict()
    erm_momentum = [b.clone() for b in (s["momentum_buffer"] for s in state["state"].values())]

    def one_step():
        ft = torch.nn.Linear(4, 2)
        ft.load_state_dict(net.state_dict())
        ft_opt = mt.resume_sgd(ft, state, lr=0.1)
        F.cross_entropy(ft(x), y).backward()
        ft_opt.step()
        return ft.weight.detach().clone()

    first, second = one_step(), one_step()
    assert torch.equal(first, second)  # both variants started from the same ERM state
    for kept, now in zip(erm_momentum, (s["momentum_buffer"] for s in state["state"].values())):
        assert torch.equal(kept, now)  # and the ERM state itself is untouched
