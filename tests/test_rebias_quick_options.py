"""The options behind chapter 05's quick profile (issue 18): strided f, input-pooled g, the median
kernel width, the per-epoch dependence diagnostics and the validation split."""

import pytest
import torch

from helpers.data import biased_mnist as bm
from helpers.methods import rebias as R
from helpers.models import SimpleConvNet
from helpers.plots import METHOD_COLOURS, method_colour
from helpers.tensordata import TensorData


def test_strides_shrink_the_map_and_input_pool_is_applied_first():
    x = torch.rand(2, 3, 28, 28)
    f = SimpleConvNet(7, width=0.125, strides=(2, 2, 2, 1))
    assert f.body(x).shape[-1] == 4  # 28 -> 14 -> 7 -> 4 -> 4
    g = SimpleConvNet(1, width=0.125, input_pool=4)
    # a 1x1 network on the pooled image: the same as feeding it the pooled image directly
    plain = SimpleConvNet(1, width=0.125)
    plain.load_state_dict(g.state_dict())
    g.eval(), plain.eval()
    assert torch.allclose(g(x), plain(torch.nn.functional.avg_pool2d(x, 4)))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"strides": (2, 2, 2)}, "strides"),
        ({"strides": (3, 1, 1, 1)}, "strides"),
        ({"input_pool": 0}, "input_pool"),
    ],
)
def test_bad_network_options_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SimpleConvNet(7, **kwargs)


def test_pooled_g_cannot_see_where_the_strokes_are():
    """Moving whole 4x4 pooling cells around leaves the pooled 1x1 network's output unchanged."""
    torch.manual_seed(0)
    g = SimpleConvNet(1, width=0.25, input_pool=4).eval()
    x = torch.rand(3, 3, 28, 28)
    cells = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (N, C, 7, 7, 4, 4)
    moved = cells.flip(2).roll(3, dims=3).permute(0, 1, 2, 4, 3, 5).reshape(3, 3, 28, 28)
    assert torch.allclose(g(x), g(moved), atol=1e-5)


def _setup(method="rebias", sigma=1.0):
    torch.manual_seed(0)
    return R.build(
        method,
        width=0.125,
        device="cpu",
        lr=1e-3,
        weight_decay=0.0,
        sigma=sigma,
        f_strides=(2, 2, 2, 1),
        g_input_pool=4,
    )


def _one_epoch(setup, sets):
    """One epoch of ``setup`` on ``sets``, scored on its "val" split."""
    return R.train(
        setup,
        sets,
        epochs=1,
        batch_size=16,
        lr_step=20,
        seed=0,
        progress=False,
        eval_splits=("val",),
    )


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return TensorData(
        torch.rand(n, 3, 28, 28, generator=gen) * 2 - 1, torch.randint(0, 10, (n,), generator=gen)
    )


def test_median_sigma_trains_and_bad_sigma_is_refused():
    setup = _setup(sigma="median")
    row = _one_epoch(setup, {"train": _data(), "val": _data(seed=1)}).rows[-1]
    assert torch.isfinite(torch.tensor(row["hsic"]))
    assert {"val_acc", "g_val_acc", "val_hsic", "val_hsic_median", "val_f_feat_norm"} <= set(row)
    for bad in (0.0, -1.0, "mean", True):
        with pytest.raises(ValueError, match="sigma"):
            _setup(sigma=bad)


def test_missing_evaluation_split_is_named():
    setup = _setup()
    with pytest.raises(ValueError, match="val"):
        _one_epoch(setup, {"train": _data()})


class _Scaled(torch.nn.Module):
    """f with its features multiplied by ``k``: the same representation at another scale."""

    def __init__(self, net, k):
        super().__init__()
        self.net, self.k = net, k

    def features(self, x):
        return self.k * self.net.features(x)


def test_median_hsic_ignores_the_feature_scale_but_fixed_sigma_does_not():
    setup = _setup()
    f, g = setup.modules["f"].eval(), setup.modules["g"].eval()
    # flat coloured images: both networks' features are functions of the colour, so dependent
    colours = torch.arange(128) % 10
    data = TensorData(
        bm.colour_background(torch.zeros(128, 28, 28, dtype=torch.uint8), colours), colours
    )
    base = R.dependence_on(f, g, data)
    scaled = R.dependence_on(_Scaled(f, 10.0), g, data)
    assert scaled["hsic_median"] == pytest.approx(base["hsic_median"], rel=1e-3, abs=1e-6)
    assert scaled["f_feat_norm"] == pytest.approx(10 * base["f_feat_norm"], rel=1e-4)
    assert base["hsic_median"] > 1e-3  # the colour dependence is there
    # with σ fixed the value follows the scale (here: small features, all kernel entries near 1)
    ratio = scaled["hsic"] / base["hsic"]
    assert ratio > 2 or ratio < 0.5


def test_validation_split_is_held_out_and_unbiased(mnist):
    sets = bm.biased_mnist(0.99, seed=0, train_size=2000, test_size=100, val_size=1000)
    assert len(sets["val"]) == 1000 and len(sets["train"]) == 2000
    aligned = float((sets["val"].y == sets["val"].bias).float().mean())
    assert 0.05 < aligned < 0.2  # coloured at ρ = 0.1
    # the validation digits are not training digits: compare the raw strokes
    strokes = lambda d: {bytes((d.x[i] == 1).all(0).numpy().tobytes()) for i in range(len(d))}  # noqa: E731
    assert not strokes(sets["val"]) & strokes(sets["train"])
    again = bm.biased_mnist(0.99, seed=0, train_size=2000, test_size=100, val_size=1000)
    assert torch.equal(again["val"].x, sets["val"].x)
    # without a validation split the data are what they were before the option existed
    plain = bm.biased_mnist(0.99, seed=0, train_size=2000, test_size=100)
    assert "val" not in plain


def test_bad_val_size_names_the_parameter(mnist):
    with pytest.raises(ValueError, match="val_size"):
        bm.biased_mnist(0.99, seed=0, val_size=5)


def test_one_colour_per_method():
    assert method_colour("ReBias") == METHOD_COLOURS["ReBias"]
    assert method_colour("ReBias, λ = 1 (paper)") == METHOD_COLOURS["ReBias"]
    assert method_colour("something else") is None
    assert (
        len({METHOD_COLOURS[m] for m in ("Vanilla", "Biased", "ReBias", "RUBi", "LearnedMixin+H")})
        == 5
    )
