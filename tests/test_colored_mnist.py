import pytest
import torch

from helpers.data import colored_mnist as cm
from helpers.models import FusionLeNet


@pytest.fixture(scope="module")
def small(mnist):
    return cm.build_colored_mnist(seed=3, train_size=2000, val_size=500, test_size=600)


def test_sizes_split_and_shapes(small, mnist):
    assert (
        len(small["train"]) == 2000
        and len(small["val_gray"]) == 500
        and len(small["test_conflicting"]) == 600
    )
    for name, d in small.sets.items():
        assert d.x.shape[1:] == (1, 28, 28) and d.extras["colour"].shape == (len(d), 3), name
        assert float(d.x.min()) >= 0.0 and float(d.x.max()) <= 1.0
        assert float(d.extras["colour"].min()) >= 0.0 and float(d.extras["colour"].max()) <= 1.0
    full = cm.build_colored_mnist(seed=3)
    assert (
        len(full["train"]) == 48_000
        and len(full["val_colored"]) == 12_000
        and len(full["test_gray"]) == 10_000
    )
    # train and val are disjoint parts of the 60k training images: together they hold each label
    # count once
    counts = torch.bincount(torch.cat([full["train"].y, full["val_gray"].y]), minlength=10)
    assert torch.equal(counts, torch.bincount(mnist["train_y"], minlength=10))


def test_colours_follow_the_label_table(small):
    table = small.table
    assert table.shape == (10, 3)
    for name in ("train", "val_colored", "test_colored"):
        d = small[name]
        assert torch.equal(d.bias, d.y)
        dev = (d.extras["colour"] - table[d.y]).abs()
        assert float(dev.mean()) < 0.1 and float(dev.max()) < 0.6  # N(0, 0.1²) noise, clipped
    for name in ("val_gray", "test_gray"):
        assert torch.equal(small[name].extras["colour"], torch.ones(len(small[name]), 3))
        assert small[name].bias is None


def test_conflicting_set_carries_another_class_colour(small):
    d, col = small["test_conflicting"], small["test_colored"]
    assert bool((d.bias != d.y).all())
    assert torch.equal(d.x, col.x) and torch.equal(d.y, col.y)
    nearest = torch.cdist(d.extras["colour"], small.table).argmin(1)
    assert (
        float((nearest == d.bias).float().mean()) > 0.5
    )  # most colours are closest to the other class's
    offsets = torch.bincount((d.bias - d.y) % 10, minlength=10)
    assert offsets[0] == 0 and bool((offsets[1:] > 30).all())  # uniform over the other nine


def test_deterministic_per_seed(mnist):
    a = cm.build_colored_mnist(seed=1, train_size=300, val_size=100, test_size=100)
    b = cm.build_colored_mnist(seed=1, train_size=300, val_size=100, test_size=100)
    c = cm.build_colored_mnist(seed=2, train_size=300, val_size=100, test_size=100)
    assert torch.equal(a.table, b.table) and torch.equal(
        a["train"].extras["colour"], b["train"].extras["colour"]
    )
    assert not torch.equal(a.table, c.table)


def test_min_colour_distance():
    table = torch.tensor(
        [[0.0, 0, 0], [1, 1, 1], [0.1, 0, 0]] + [[0.5 + 0.04 * i, 0.9, 0.1] for i in range(7)]
    )
    d, i, j = cm.min_colour_distance(table)
    assert d == pytest.approx(0.04, abs=1e-5) and i >= 3 and j == i + 1


def test_fusion_lenet_shapes_and_colour_path():
    torch.manual_seed(0)
    model = FusionLeNet()
    x, c = torch.rand(5, 1, 28, 28), torch.rand(5, 3)
    out = model(x, c)
    assert out.shape == (5, 10)
    # colour enters only linearly at the last layer: logits(c1) − logits(c2) = W_c (c1 − c2)
    diff = model(x, c) - model(x, torch.zeros_like(c))
    assert torch.allclose(diff, c @ model.colour_weights().T, atol=1e-5)


def test_predict_matches_forward(small):
    torch.manual_seed(0)
    model = FusionLeNet()
    d = small["val_colored"]
    logits = cm.predict(model, d, batch_size=128)
    assert torch.allclose(logits[:7], model(d.x[:7], d.extras["colour"][:7]), atol=1e-5)
    assert 0.0 <= cm.accuracy(model, d) <= 1.0


def test_sphere_palette_spreads_the_colours_inside_the_cube():
    table = cm.colour_table(3, "sphere")
    assert table.shape == (10, 3) and bool(((table >= 0) & (table <= 1)).all())
    assert torch.allclose((table - 0.5).norm(dim=1), torch.full((10,), 0.5), atol=1e-5)
    assert cm.min_colour_distance(table)[0] > 0.45
    assert not torch.equal(table, cm.colour_table(4, "sphere"))  # seeded rotation / assignment
    with pytest.raises(ValueError, match="palette"):
        cm.colour_table(0, "rainbow")


def test_scale_multiplies_the_class_colours_and_leaves_grey_cue_free(mnist):
    base = cm.build_colored_mnist(seed=0, train_size=100, val_size=100, test_size=100)
    big = cm.build_colored_mnist(seed=0, scale=10.0, train_size=100, val_size=100, test_size=100)
    for name in base.sets:
        factor = 1.0 if name.endswith("_gray") else 10.0
        assert torch.allclose(big[name].extras["colour"], factor * base[name].extras["colour"])
        assert torch.equal(big[name].x, base[name].x)
    assert torch.equal(big["test_gray"].extras["colour"][0], torch.tensor(cm.GRAY_COLOUR))
    with pytest.raises(ValueError, match="scale"):
        cm.build_colored_mnist(seed=0, scale=0.0, train_size=100)


def test_a_bad_scale_is_refused_before_mnist_is_read(monkeypatch):
    def no_mnist(root=None):
        raise AssertionError("MNIST was read before the parameters were checked")

    monkeypatch.setattr(cm, "load_mnist", no_mnist)
    with pytest.raises(ValueError, match="scale must be > 0"):
        cm.build_colored_mnist(seed=0, scale=-1.0)


def test_the_colour_alone_names_the_class_when_the_colours_are_far_apart(small):
    # reference colours with noise 0.1: a linear read-out of the colour alone beats chance
    # (10 %) by far; the MLP is at least as good on the same colours
    linear = cm.colour_only_accuracy(small.sets)
    assert 0.5 < linear <= 1.0
    assert cm.colour_only_accuracy(small.sets, hidden=16, seed=0) >= linear - 0.05
