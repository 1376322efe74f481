"""Background-coloured MNIST: masks, colours, mode statistics, the split and determinism."""

import pytest
import torch

from helpers.data import background_mnist as B


def _hand_made():
    raw = torch.zeros(2, 28, 28, dtype=torch.uint8)
    raw[0, 5:20, 10:13] = 200  # a "1"
    raw[0, 4, 10] = 1  # faint anti-aliased pixel: still stroke
    raw[1, 10:12, 3:25] = 50  # a bar
    return raw


def test_mask_and_colours_exact_on_hand_made_image():
    raw = _hand_made()
    labels = torch.tensor([5, 1])
    d = B.colour_split(raw, labels, "pure", torch.Generator().manual_seed(0), biased_digits=(5,))
    img = ((d.x + 1) * 127.5).round().to(torch.uint8)
    mask = raw != 0
    assert torch.equal(d.extras["mask"][:, 0], mask)
    for i in range(2):
        assert (img[i][:, mask[i]] == 255).all()  # strokes pure white
    # biased digit 5 sits on its pool colour on every background pixel
    bg0 = img[0][:, ~mask[0]]
    assert torch.equal(bg0, B.POOL[5][:, None].expand_as(bg0))
    # the unbiased digit sits on the pool colour recorded in bias
    bg1 = img[1][:, ~mask[1]]
    assert torch.equal(bg1, B.POOL[int(d.bias[1])][:, None].expand_as(bg1))
    assert int(d.bias[0]) == 5
    assert d.x.min() >= -1 and d.x.max() <= 1


def test_single_colour_sets_and_names():
    raw = _hand_made()
    d = B.colour_split(raw, torch.tensor([0, 1]), "pure13", torch.Generator().manual_seed(0))
    img = ((d.x + 1) * 127.5).round().to(torch.uint8)
    assert torch.equal(img[0, :, 0, 0], torch.tensor([225, 0, 225], dtype=torch.uint8))
    assert B.SINGLE_COLOURS["pure_half_23"] == (0, 128, 128)
    assert B.SINGLE_COLOURS["pure_black"] == (0, 0, 0)
    assert B.SINGLE_COLOURS["pure_special"] == (0, 168, 225)


def test_mode_statistics():
    gen = torch.Generator().manual_seed(0)
    n = 400
    strips = B.backgrounds("strips", n, gen)
    rows = torch.arange(28) % 5 < 2
    assert (strips[:, :, ~rows] == 0).all()  # other rows black
    per_image = strips[:, :, rows]  # one colour per image on strip rows
    assert (per_image == per_image[:, :, :1, :1]).all()
    assert strips.max() < B.RANDOM_COLOUR_MAX
    rp = B.backgrounds("random_pure", n, gen)
    assert (rp == rp[:, :, :1, :1]).all() and rp.max() < 225
    assert len(torch.unique(rp[:, :, 0, 0], dim=0)) > n * 0.95
    noise = B.backgrounds("noise", n, gen).float()
    assert abs(noise.mean() - 127.5) < 2 and noise.max() == 255 and noise.min() == 0
    pool = B.backgrounds("pure", n, gen)
    colours = torch.unique(pool[:, :, 0, 0], dim=0)
    assert len(colours) == 10 and all((c == B.POOL).all(1).any() for c in colours)
    mix = B.backgrounds("mixture", 600, gen)
    is_uniform = (mix == mix[:, :, :1, :1]).flatten(1).all(1)
    is_strip = (mix[:, :, ~rows] == 0).flatten(1).all(1) & ~is_uniform
    noisy = ~is_uniform & ~is_strip
    for part in (is_uniform, is_strip, noisy):  # each method about a third
        assert 0.25 < part.float().mean() < 0.42


def test_biased_digits_on_own_colour_in_train_and_dev_only():
    mn = {
        "train_x": torch.randint(0, 2, (60_000, 28, 28), dtype=torch.uint8) * 255,
        "train_y": torch.arange(60_000) % 10,
    }
    d = B.build_background_mnist(
        seed=3, train_size=500, dev_size=200, test_size=300, mnist=mn, test_modes=("pure", "noise")
    )
    for split in ("train", "dev"):
        s = d[split]
        big = s.y >= 5
        assert torch.equal(s.bias[big], s.y[big])
        assert (s.bias[~big] != s.y[~big]).any()  # unbiased digits on random pool colours
    t = d["test_pure"]
    assert (t.bias[t.y >= 5] != t.y[t.y >= 5]).float().mean() > 0.7
    assert d["test_noise"].bias is None
    assert len(d["train"]) == 500 and len(d["dev"]) == 200 and len(d["test_noise"]) == 300


def test_split_sizes_and_disjoint():
    idx = B.split_indices(0)
    assert len(idx["train"]) == 40_000 and len(idx["dev"]) == 10_000 and len(idx["test"]) == 10_000
    everything = torch.cat(list(idx.values()))
    assert len(torch.unique(everything)) == 60_000
    assert idx["test"].min() == 50_000 and max(idx["train"].max(), idx["dev"].max()) < 50_000


def test_determinism_per_seed():
    mn = {
        "train_x": torch.randint(
            0, 256, (60_000, 28, 28), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
        ),
        "train_y": torch.arange(60_000) % 10,
    }
    kw = dict(
        train_size=300,
        dev_size=100,
        test_size=100,
        mnist=mn,
        unbiased_mode="mixture",
        test_modes=("mixture", "noise"),
    )
    a = B.build_background_mnist(seed=0, **kw)
    b = B.build_background_mnist(seed=0, **kw)
    c = B.build_background_mnist(seed=1, **kw)
    for k in a:
        assert torch.equal(a[k].x, b[k].x)
    assert not torch.equal(a["test_noise"].x, c["test_noise"].x)
    assert not torch.equal(a["train"].x, c["train"].x)


def test_recolour_keeps_strokes_and_draws_new_backgrounds():
    raw = _hand_made().repeat(50, 1, 1)
    mask = B.stroke_mask(raw)
    labels = torch.tensor([5, 1]).repeat(50)
    gen = torch.Generator().manual_seed(0)
    a = B.recolour(mask, labels, "noise", gen)
    b = B.recolour(mask, labels, "noise", gen)
    assert (a.masked_select(mask.expand_as(a)) == 1).all()
    assert not torch.equal(a, b)
    # unbiased digits (label 1) get a pool colour, biased ones (label 5) noise
    img = ((a + 1) * 127.5).round().to(torch.uint8)
    assert ((img[1] == img[1][:, :1, :1]) | mask[1]).all()
    assert not (img[0] == img[0][:, :1, :1]).all()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"unbiased_mode": "clipped"}, "unbiased_mode"),
        ({"bias_mode": "half"}, "bias_mode"),
        ({"test_modes": ("pure_rainbow",)}, "test_modes"),
        ({"train_size": 50_000}, "train_size"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        B.build_background_mnist(seed=0, mnist={"train_x": None, "train_y": None}, **kwargs)


def test_basic_copies_of_biased_digits_use_every_pool_colour():
    raw = _hand_made()[:1].repeat(300, 1, 1)
    mask = B.stroke_mask(raw)
    labels = torch.full((300,), 7)
    img = (
        ((B.recolour(mask, labels, "basic", torch.Generator().manual_seed(0)) + 1) * 127.5)
        .round()
        .to(torch.uint8)
    )
    corner = img[:, :, 0, 0]  # (0, 0) is background in _hand_made
    assert all((c == B.POOL).all(1).any() for c in corner)  # only pool colours ...
    assert len(torch.unique(corner, dim=0)) == 10  # ... all ten, the digit's own included


def test_per_colour_accuracy_needs_pool_labels():
    raw = _hand_made().repeat(20, 1, 1)
    y = torch.tensor([0, 1]).repeat(20)
    d = B.colour_split(raw, y, "pure", torch.Generator().manual_seed(0))
    acc = B.per_colour_accuracy(y.clone(), d)
    present = torch.isin(torch.arange(10), d.bias)
    assert torch.all(acc[present] == 1) and torch.isnan(acc[~present]).all()
    with pytest.raises(ValueError, match="bias"):
        B.per_colour_accuracy(y, B.colour_split(raw, y, "noise", torch.Generator().manual_seed(0)))
