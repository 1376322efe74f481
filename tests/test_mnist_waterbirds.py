import json
import os

import pytest
import torch

from helpers.data.feature_folder import load_feature_folder
from helpers.data.mnist import raw_dir
from helpers.data.mnist_waterbirds import (
    WATERBIRDS_TRAIN_GROUPS,
    _split_indices,
    backgrounds,
    build_images,
    occlude,
    offline_feature_folder,
)


@pytest.fixture(scope="module")
def small():
    return build_images(
        5,
        n_train_groups=(40, 6, 4, 20),
        n_val_per_group=5,
        n_test_per_group=7,
        n_encoder=30,
        include_encoder=True,
    )


def test_split_sizes_and_labels(small):
    counts = {s: torch.bincount(2 * d.y + d.bias, minlength=4).tolist() for s, d in small.items()}
    assert counts["train"] == [40, 6, 4, 20]
    assert counts["val"] == [5] * 4
    assert counts["test"] == [7] * 4
    assert len(small["encoder"]) == 30
    for d in small.values():
        assert d.x.shape[1:] == (3, 28, 28) and d.x.dtype == torch.float32
        assert float(d.x.min()) >= 0 and float(d.x.max()) <= 1
        assert torch.equal(d.y, (d.extras["digit"] >= 5).long())


def test_same_seed_same_arrays(small):
    again = build_images(
        5, n_train_groups=(40, 6, 4, 20), n_val_per_group=5, n_test_per_group=7, n_encoder=30
    )
    other = build_images(
        6, n_train_groups=(40, 6, 4, 20), n_val_per_group=5, n_test_per_group=7, n_encoder=30
    )
    for s in ("train", "val", "test"):
        assert torch.equal(small[s].x, again[s].x) and torch.equal(small[s].bias, again[s].bias)
    assert not torch.equal(small["train"].x, other["train"].x)


def test_default_train_groups_are_waterbirds(mnist):
    parts = _split_indices(mnist, 0, WATERBIRDS_TRAIN_GROUPS, 250, 500, 10000)
    idx, bias = parts["train"]
    y = (mnist["train_y"][idx] >= 5).long()
    assert torch.bincount(2 * y + bias, minlength=4).tolist() == [3498, 184, 56, 1057]
    train_side = [set(parts[s][0].tolist()) for s in ("train", "val", "encoder")]
    assert sum(len(s) for s in train_side) == len(
        set().union(*train_side)
    )  # disjoint MNIST-train indices
    assert len(set(parts["test"][0].tolist())) == len(parts["test"][0]) == 2000


def test_background_families_differ_in_hue():
    gen = torch.Generator().manual_seed(0)
    fam = torch.tensor([0] * 200 + [1] * 200)
    bg = backgrounds(fam, gen)
    red, blue = bg[:, 0].mean((1, 2)), bg[:, 2].mean((1, 2))
    assert bool((red[:200] > blue[:200]).all()) and bool((blue[200:] > red[200:]).all())
    assert bg[:200].std(0).mean() > 0.05  # drawn at random within a family, not one colour


def test_occluder_erases_a_square():
    gen = torch.Generator().manual_seed(1)
    out = occlude(torch.ones(50, 28, 28), gen)
    erased = (out == 0).sum((1, 2))
    assert bool(((erased >= 64) & (erased <= 256)).all())
    assert bool((out[:, :4] == 1).all()) and bool((out[:, 24:] == 1).all())


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="n_train_groups"):
        build_images(0, n_train_groups=(1, 2, 3))
    with pytest.raises(ValueError, match="n_val_per_group"):
        build_images(0, n_val_per_group=0)
    with pytest.raises(ValueError, match="seed"):
        build_images(-1)
    with pytest.raises(ValueError, match="encoder_epochs"):
        offline_feature_folder(0, encoder_epochs=0)
    with pytest.raises(ValueError, match="test split"):
        build_images(0, n_test_per_group=10**6)


def test_offline_folder_builds_and_caches(tmp_path, mnist, monkeypatch):
    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)
    root = tmp_path / "root"
    (root / "MNIST").mkdir(parents=True)
    os.symlink(raw_dir(), root / "MNIST" / "raw")
    kw = dict(
        root=root,
        encoder_epochs=1,
        n_val_per_group=20,
        n_test_per_group=20,
        feature_dim=8,
        n_encoder=400,
        n_train_groups=(100, 10, 8, 40),
        device="cpu",
        verbose=False,
    )
    path, info = offline_feature_folder(3, **kw)
    splits = load_feature_folder(path)
    assert splits["train"].feats.shape == (158, 8)
    assert info["group_counts"] == {"train": [100, 10, 8, 40], "val": [20] * 4, "test": [20] * 4}
    assert info["feature_dim"] == 8 and info["source"] == "offline-mnist"
    for key in (
        "probe_digit_acc",
        "probe_background_acc",
        "erm_linear_worst",
        "erm_linear_mean_of_groups",
    ):
        assert 0.0 <= info[key] <= 1.0
    assert info["probe_background_acc"] > 0.9  # colour alone gives the family away
    mtime = (path / "train_feats.npy").stat().st_mtime_ns
    path2, info2 = offline_feature_folder(3, **kw)
    assert (
        path2 == path and info2 == info and (path / "train_feats.npy").stat().st_mtime_ns == mtime
    )
    path3, _ = offline_feature_folder(4, **kw)
    assert path3 != path
    before = json.loads((path / "checksums.json").read_text())
    monkeypatch.setenv(
        "SHORTCUT_BOOK_RETRAIN", "1"
    )  # the runner's retrain flag rebuilds: same arrays on CPU
    offline_feature_folder(3, **kw)
    assert (path / "train_feats.npy").stat().st_mtime_ns != mtime
    assert json.loads((path / "checksums.json").read_text()) == before
