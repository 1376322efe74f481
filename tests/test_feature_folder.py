import json

import numpy as np
import pytest
import torch

from helpers.data.feature_folder import (
    FeatureFolderError,
    FeatureSplit,
    balance_groups,
    load_feature_folder,
    make_tiny_feature_folder,
    read_meta,
    write_feature_folder,
)


@pytest.fixture
def tiny(tmp_path):
    return make_tiny_feature_folder(tmp_path / "tiny", seed=3)


def test_tiny_folder_round_trip(tiny):
    names = sorted(p.name for p in tiny.iterdir())
    expected = sorted(
        [f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("feats", "targets", "bias")]
        + ["checksums.json", "meta.json"]
    )
    assert names == expected
    splits = load_feature_folder(tiny)
    assert set(splits) == {"train", "val", "test"}
    tr = splits["train"]
    assert (
        tr.feats.dtype == torch.float32
        and tr.targets.dtype == torch.long
        and tr.bias.dtype == torch.long
    )
    assert tr.group_counts() == [120, 12, 6, 40]
    assert splits["val"].group_counts() == [10, 10, 10, 10]
    assert torch.equal(tr.groups, 2 * tr.targets + tr.bias)
    assert len(tr) == 178 and tr.feats.shape == (178, 16)
    assert np.load(tiny / "train_feats.npy").dtype == np.float32
    assert np.load(tiny / "train_bias.npy").dtype == np.int64
    assert read_meta(tiny)["seed"] == 3


def test_tiny_folder_is_deterministic(tmp_path):
    a = load_feature_folder(make_tiny_feature_folder(tmp_path / "a", seed=1))
    b = load_feature_folder(make_tiny_feature_folder(tmp_path / "b", seed=1))
    c = load_feature_folder(make_tiny_feature_folder(tmp_path / "c", seed=2))
    assert torch.equal(a["train"].feats, b["train"].feats)
    assert not torch.equal(a["train"].feats, c["train"].feats)


def test_singular_target_spelling_accepted(tiny):
    (tiny / "checksums.json").unlink()
    for s in ("train", "val", "test"):
        (tiny / f"{s}_targets.npy").rename(tiny / f"{s}_target.npy")
    assert load_feature_folder(tiny)["test"].group_counts() == [12, 12, 12, 12]


def test_both_spellings_rejected(tiny):
    (tiny / "checksums.json").unlink()
    np.save(tiny / "val_target.npy", np.load(tiny / "val_targets.npy"))
    with pytest.raises(FeatureFolderError, match="val_target"):
        load_feature_folder(tiny)


def test_separate_val_folder(tiny, tmp_path):
    other = tmp_path / "valdir"
    other.mkdir()
    (tiny / "checksums.json").unlink()
    for k in ("feats", "targets", "bias"):
        (tiny / f"val_{k}.npy").rename(other / f"val_{k}.npy")
    with pytest.raises(FeatureFolderError, match="val_feats.npy is missing"):
        load_feature_folder(tiny)
    assert load_feature_folder(tiny, val_path=other)["val"].group_counts() == [10] * 4


def test_minus_one_bias_binarised(tiny):
    (tiny / "checksums.json").unlink()
    b = np.load(tiny / "test_bias.npy")
    np.save(tiny / "test_bias.npy", np.where(b > 0, 1, -1).astype(np.int32))
    assert torch.equal(load_feature_folder(tiny)["test"].bias, torch.from_numpy(b))


def _corrupt(folder, name, arr):
    (folder / "checksums.json").unlink()
    np.save(folder / name, arr)


@pytest.mark.parametrize(
    ("name", "make", "pattern"),
    [
        (
            "train_feats.npy",
            lambda a: a[:-1],
            "train_targets.npy has 178 rows but train_feats.npy has 177",
        ),
        ("val_feats.npy", lambda a: a[:, :-1], "val_feats.npy has D = 15"),
        (
            "test_feats.npy",
            lambda a: a.astype(np.int64),
            "test_feats.npy: features must be floating point",
        ),
        ("test_feats.npy", lambda a: a[:, 0], r"test_feats.npy: features must have shape \(N, D\)"),
        (
            "train_feats.npy",
            lambda a: np.where(np.arange(a.size).reshape(a.shape) == 5, np.nan, a),
            "train_feats.npy: features contain NaN",
        ),
        ("train_targets.npy", lambda a: a * 2, "train_targets.npy: targets must be binary"),
        (
            "test_targets.npy",
            lambda a: a + 0.5,
            "test_targets.npy: targets must hold whole numbers",
        ),
        ("val_bias.npy", lambda a: a + 1, "val_bias.npy: bias must be binary"),
        ("test_bias.npy", lambda a: a.astype(str), "test_bias.npy: bias must be numeric"),
    ],
)
def test_malformed_files_name_the_file(tiny, name, make, pattern):
    arr = np.load(tiny / name)
    _corrupt(tiny, name, make(arr))
    with pytest.raises(FeatureFolderError, match=pattern):
        load_feature_folder(tiny)


def test_unbalanced_val_rejected(tiny):
    (tiny / "checksums.json").unlink()
    for k in ("feats", "targets", "bias"):
        a = np.load(tiny / f"val_{k}.npy")
        np.save(tiny / f"val_{k}.npy", a[1:])
    with pytest.raises(FeatureFolderError, match="val_bias.npy .*group-balanced"):
        load_feature_folder(tiny)


def test_empty_group_rejected(tiny):
    (tiny / "checksums.json").unlink()
    t = np.load(tiny / "test_targets.npy")
    b = np.load(tiny / "test_bias.npy")
    b[t == 1] = 1  # group (1, 0) disappears
    np.save(tiny / "test_bias.npy", b)
    with pytest.raises(FeatureFolderError, match=r"test_bias.npy.*\(y=1, b=0\).*empty"):
        load_feature_folder(tiny)


def test_missing_file_and_folder(tiny, tmp_path):
    (tiny / "checksums.json").unlink()
    (tiny / "test_bias.npy").unlink()
    with pytest.raises(FeatureFolderError, match="test_bias.npy is missing"):
        load_feature_folder(tiny)
    with pytest.raises(FeatureFolderError, match="not a directory"):
        load_feature_folder(tmp_path / "nowhere")


def test_pickled_object_array_rejected(tiny):
    (tiny / "checksums.json").unlink()
    np.save(tiny / "train_bias.npy", np.array([{"a": 1}] * 178, dtype=object), allow_pickle=True)
    with pytest.raises(FeatureFolderError, match="train_bias.npy is not a readable"):
        load_feature_folder(tiny)


def test_checksum_mismatch_detected(tiny):
    np.save(tiny / "val_feats.npy", np.load(tiny / "val_feats.npy") + 1)
    with pytest.raises(FeatureFolderError, match="val_feats.npy: SHA-256 differs"):
        load_feature_folder(tiny)
    table = json.loads((tiny / "checksums.json").read_text())
    assert set(table) == {
        f"{s}_{k}.npy" for s in ("train", "val", "test") for k in ("feats", "targets", "bias")
    }


def test_write_refuses_nonempty_and_overwrites_atomically(tiny, tmp_path):
    splits = load_feature_folder(tiny)
    with pytest.raises(FileExistsError):
        write_feature_folder(tiny, splits)
    splits["train"] = FeatureSplit(
        splits["train"].feats * 2, splits["train"].targets, splits["train"].bias
    )
    write_feature_folder(tiny, splits, overwrite=True)
    assert torch.equal(load_feature_folder(tiny)["train"].feats, splits["train"].feats)
    assert not (tiny / "meta.json").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_write_validates_before_writing(tmp_path, tiny):
    splits = load_feature_folder(tiny)
    v = splits["val"]
    splits["val"] = FeatureSplit(v.feats[1:], v.targets[1:], v.bias[1:])
    with pytest.raises(FeatureFolderError, match="group-balanced"):
        write_feature_folder(tmp_path / "out", splits)
    assert not (tmp_path / "out").exists()


def test_balance_groups():
    y = torch.tensor([0] * 10 + [0] * 3 + [1] * 5 + [1] * 7)
    b = torch.tensor([0] * 10 + [1] * 3 + [0] * 5 + [1] * 7)
    idx = balance_groups(y, b, seed=0)
    assert torch.bincount(2 * y[idx] + b[idx], minlength=4).tolist() == [3, 3, 3, 3]
    assert torch.equal(idx, balance_groups(y, b, seed=0))
    assert torch.all(idx[1:] > idx[:-1])
    with pytest.raises(ValueError, match="empty"):
        balance_groups(torch.zeros(4, dtype=torch.long), torch.zeros(4, dtype=torch.long), seed=0)


def test_feature_split_shape_check():
    with pytest.raises(ValueError, match="targets"):
        FeatureSplit(
            torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long)
        )


def _unrelated(folder):
    folder.mkdir()
    (folder / "thesis.tex").write_text("\\chapter{One}\n")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_overwrite_refuses_a_folder_that_is_not_a_feature_folder(tiny, tmp_path):
    splits = load_feature_folder(tiny)
    other = tmp_path / "thesis"
    before = _unrelated(other)
    with pytest.raises(
        FeatureFolderError,
        match=rf"{other} is not a feature folder .*thesis.tex.*nothing was deleted",
    ):
        write_feature_folder(other, splits, overwrite=True)
    assert sorted(p.relative_to(other).as_posix() for p in other.rglob("*")) == before
    # a feature folder with something foreign inside is not replaced either
    (tiny / "notes").mkdir()
    with pytest.raises(FeatureFolderError, match="notes/"):
        write_feature_folder(tiny, splits, overwrite=True)
    assert (tiny / "notes").is_dir() and (tiny / "train_feats.npy").is_file()


def test_float64_features_beyond_float32_are_refused(tiny):
    feats = np.load(tiny / "test_feats.npy").astype(np.float64)
    feats[3, 2] = 1e300  # finite in float64, inf in float32
    np.save(tiny / "test_feats.npy", feats)
    (tiny / "checksums.json").unlink()
    with pytest.raises(
        FeatureFolderError, match="test_feats.npy: features exceed the float32 range"
    ):
        load_feature_folder(tiny)


@pytest.mark.parametrize("entry", ["../../../secret.txt", "../outside.npy", "ABSOLUTE"])
def test_checksums_entries_outside_the_folder_are_refused(tiny, tmp_path, entry):
    outside = tmp_path / "outside.npy"
    outside.write_bytes(b"not yours")
    if entry == "ABSOLUTE":
        entry = str(outside)
    table = json.loads((tiny / "checksums.json").read_text())
    table[entry] = "0" * 64
    (tiny / "checksums.json").write_text(json.dumps(table))
    with pytest.raises(
        FeatureFolderError, match=r"checksums.json: entry .* points outside the folder"
    ):
        load_feature_folder(tiny)


def test_a_single_feature_is_refused_by_the_loader(tiny):
    """Issue 29, item 6: D = 1 passed the loader and crashed chapter 06 in its PCA cell."""
    from helpers.data.feature_folder import CHECKSUMS

    for split in ("train", "val", "test"):
        path = tiny / f"{split}_feats.npy"
        np.save(path, np.load(path)[:, :1])
    (tiny / CHECKSUMS).unlink()
    with pytest.raises(FeatureFolderError, match=r"train_feats.npy has D = 1 .*at least 2"):
        load_feature_folder(tiny)


def test_a_user_folder_named_like_the_default_is_not_taken_for_it(tmp_path):
    from helpers.data.feature_folder import OFFLINE_SOURCE, source_name

    assert source_name(tmp_path / "waterbirds") == "waterbirds"
    assert source_name(tmp_path / OFFLINE_SOURCE) != OFFLINE_SOURCE
    assert source_name(f"{tmp_path}/{OFFLINE_SOURCE}/") == f"{OFFLINE_SOURCE} (user folder)"
