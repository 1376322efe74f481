import pytest
import torch

from helpers.data import patch_mnist as pm


def test_labels_and_digit_ordered_patches():
    digits = torch.tensor([9, 0, 4, 5, 1, 4, 6, 3, 5, 7, 2, 4] * 25)
    patched = pm.choose_patched(digits, 0.1, "digit")
    labels = pm.two_class_labels(digits)
    n0, n1 = int((labels == 0).sum()), int((labels == 1).sum())
    assert int(patched[labels == 0].sum()) == round(0.9 * n0)
    assert int(patched[labels == 1].sum()) == round(0.1 * n1)
    # digit order: unpatched class-0 images are the highest digits (4s), patched class-1 images are
    # 5s
    assert set(digits[(labels == 0) & ~patched].tolist()) == {4}
    assert set(digits[(labels == 1) & patched].tolist()) == {5}


def test_random_order_is_seeded():
    digits = torch.arange(10).repeat(30)
    a = pm.choose_patched(digits, 0.2, "random", seed=3)
    b = pm.choose_patched(digits, 0.2, "random", seed=3)
    c = pm.choose_patched(digits, 0.2, "random", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_render_patch_colour_and_size():
    img = torch.full((2, 28, 28), 128, dtype=torch.uint8)
    x = pm.render(img, torch.tensor([True, False]), 4, (255, 0, 0))
    assert x.shape == (2, 3, 28, 28)
    assert torch.equal(
        x[0, :, :4, :4], torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 4, 4)
    )
    assert torch.allclose(x[0, :, 4:, 4:], torch.tensor(128 / 255))
    assert torch.allclose(x[1], torch.tensor(128 / 255))


def test_builder_sets(mnist):
    sets = pm.patch_mnist(seed=0, train_size=3000, val_size=600, test_size=500)
    assert len(sets["train"]) == 2400 and len(sets["val"]) == 600
    for name in ("train", "val"):
        d = sets[name]
        share0 = d.bias[d.y == 0].float().mean()
        share1 = d.bias[d.y == 1].float().mean()
        assert share0 > 0.95 and share1 < 0.05
    raw, biased = sets["raw"], sets["biased"]
    assert int(raw.bias.sum()) == 0
    assert torch.equal(
        biased.bias, biased.y
    )  # patch on every class-1 image and on no class-0 image
    assert torch.equal(raw.y, pm.two_class_labels(raw.extras["digit"]))
    assert torch.equal(raw.x[raw.y == 0], biased.x[biased.y == 0])
    again = pm.patch_mnist(seed=0, train_size=3000, val_size=600, test_size=500)
    assert torch.equal(again["train"].x, sets["train"].x)


def test_bad_parameters():
    with pytest.raises(ValueError, match="patch_size"):
        pm.patch_mnist(patch_size=0)
    with pytest.raises(ValueError, match="conflict_order"):
        pm.patch_mnist(conflict_order="sorted")
    with pytest.raises(ValueError, match="conflict_ratio"):
        pm.patch_mnist(conflict_ratio=1.5)
    with pytest.raises(ValueError, match="val_size"):
        pm.patch_mnist(train_size=100, val_size=100)
    with pytest.raises(ValueError, match="train_size"):
        pm.patch_mnist(train_size=5, val_size=1)
    with pytest.raises(ValueError, match="test_size"):
        pm.patch_mnist(train_size=100, val_size=10, test_size=3)


def test_the_seed_draws_the_validation_split_and_the_patches(mnist):
    """A seed varies the data as each run of the official code does (its validation images are
    drawn afresh): other seed, other validation split and patch draw; same seed, same data."""
    kw = dict(train_size=3000, val_size=600, test_size=500, conflict_order="random")
    a, again, b = (pm.patch_mnist(seed=s, **kw) for s in (0, 0, 1))
    for name in a:
        assert torch.equal(a[name].x, again[name].x)
        assert torch.equal(a[name].y, again[name].y)
        assert torch.equal(a[name].bias, again[name].bias)
    assert not torch.equal(a["val"].x, b["val"].x)
    assert not torch.equal(a["train"].bias, b["train"].bias)
    # the 99 / 1 proportions hold at every seed
    for sets in (a, b):
        tr = sets["train"]
        assert tr.bias[tr.y == 0].float().mean() > 0.95 and tr.bias[tr.y == 1].float().mean() < 0.05


def test_the_validation_split_moves_with_the_seed_on_the_same_images(mnist, monkeypatch):
    """With a fixed pool of training images (no subset), the seed still picks the hold-out: the
    validation digits of two seeds differ, those of one seed repeat."""
    n = 1200
    small = {k: v[:n] if k.startswith("train") else v[:50] for k, v in mnist.items()}
    monkeypatch.setattr(pm, "load_mnist", lambda root=None: small)

    def val_ids(seed):
        sets = pm.patch_mnist(seed=seed, val_size=200)
        # identify each validation image by its pixels' checksum
        return sorted(sets["val"].x.flatten(1).sum(1).tolist())

    assert val_ids(3) == val_ids(3)
    assert val_ids(3) != val_ids(4)
