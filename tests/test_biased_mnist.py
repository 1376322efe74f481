import pytest
import torch

from helpers.data import biased_mnist as bm


@pytest.mark.parametrize(
    ("rho", "expected"), [(0.999, 63), (0.997, 184), (0.995, 305), (0.99, 606)]
)
def test_exact_conflicting_counts(mnist, rho, expected):
    labels = mnist["train_y"]
    colours = bm.assign_colours(labels, rho, gen=torch.Generator().manual_seed(3))
    assert int((colours != labels).sum()) == expected == bm.n_conflicting(labels, rho)


def test_deterministic_per_seed_and_different_across_seeds(mnist):
    x, y = mnist["train_x"][:2000], mnist["train_y"][:2000]
    a = bm.make_biased_mnist(x, y, 0.9, seed=5)
    b = bm.make_biased_mnist(x, y, 0.9, seed=5)
    c = bm.make_biased_mnist(x, y, 0.9, seed=6)
    assert torch.equal(a.x, b.x) and torch.equal(a.bias, b.bias)
    assert not torch.equal(a.bias, c.bias)


def test_pixels_white_stroke_and_palette_background():
    img = torch.zeros(1, 28, 28, dtype=torch.uint8)
    img[0, 10:15, 12] = 200
    img[0, 3, 3] = 1  # faint anti-aliased pixel still counts as stroke
    out = bm.colour_background(img, torch.tensor([3]))
    assert out.shape == (1, 3, 28, 28) and out.min() >= -1 and out.max() <= 1
    assert torch.all(out[0, :, 10:15, 12] == 1.0) and torch.all(out[0, :, 3, 3] == 1.0)
    expected = bm.PALETTE[3].float() / 255 * 2 - 1
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_eval_sets_and_confusing_labels(mnist):
    sets = bm.biased_mnist(0.99, seed=0, train_size=3000, test_size=1000, n_confusing_labels=2)
    assert torch.equal(sets["biased"].bias, sets["biased"].y)
    assert bool((sets["conflicting"].bias != sets["conflicting"].y).all())
    unb = (sets["unbiased"].bias == sets["unbiased"].y).float().mean()
    assert 0.08 < float(unb) < 0.12
    offsets = (sets["conflicting"].bias - sets["conflicting"].y) % 10
    assert set(offsets.tolist()) <= {1, 2}


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [({"rho": 1.5}, "rho"), ({"rho": 0.5, "n_confusing_labels": 0}, "n_confusing_labels")],
)
def test_invalid_arguments_name_the_parameter(kwargs, name):
    with pytest.raises(ValueError, match=name):
        bm.assign_colours(torch.arange(10), **kwargs)
