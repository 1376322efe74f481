"""Frozen-feature folders in the CAML / DFR file format: read, validate, write.

A feature folder holds, for each split ``train``, ``val`` and ``test``, three NumPy files:

=========================  =====================
========================================================== file                       dtype / shape
meaning =========================  =====================
========================================================== ``{split}_feats.npy``      float, (N, D)
features of a frozen encoder (D = 512 for ResNet-18) ``{split}_targets.npy``    integer 0/1, (N,)
target label (``{split}_target.npy`` is accepted too: the
                                                  reference README's spelling)
``{split}_bias.npy``       integer, (N,)          bias attribute, binarised as ``b = 1 if bias > 0``
=========================  =====================
==========================================================

Optional beside them: ``checksums.json`` (SHA-256 per file; verified when present) and ``meta.json``
(free-form description; never required). The loader checks that every file exists and is a plain
numeric array, that N agrees within a split and D across splits, that the features are finite, that
targets are binary, that all four groups ``g = 2 * target + bias`` occur in every split and that the
validation split is group-balanced (the protocol selects models by plain accuracy on a balanced,
unannotated val set). Every error is a :class:`FeatureFolderError` that names the offending file.

Group convention (Waterbirds): target 1 = "waterbird", bias 1 = "water background"; (0, 0) and (1,
1) are the majority groups of the training split.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from helpers.cache import atomic_write_text, file_digest
from helpers.seed import generator

SPLITS = ("train", "val", "test")
# chapter 06 projects the features onto two principal components (torch.pca_lowrank(q=2))
MIN_DIM = 2
# the label chapter 06 and its record give the built-in (offline MNIST) features
OFFLINE_SOURCE = "offline-mnist"
CHECKSUMS = "checksums.json"
META = "meta.json"
GROUP_NAMES = ("(y=0, b=0)", "(y=0, b=1)", "(y=1, b=0)", "(y=1, b=1)")


class FeatureFolderError(ValueError):
    """A feature folder is missing a file or holds a malformed one; the message names the file."""


@dataclass
class FeatureSplit:
    """One split of a feature folder: ``feats`` (N, D) float32, ``targets`` and ``bias`` (N,) long
    in {0, 1}."""

    feats: torch.Tensor
    targets: torch.Tensor
    bias: torch.Tensor

    def __post_init__(self):
        n = len(self.feats)
        if self.feats.dim() != 2:
            raise ValueError(
                f"FeatureSplit: feats must be 2-D (N, D), got shape {tuple(self.feats.shape)}"
            )
        for name in ("targets", "bias"):
            t = getattr(self, name)
            if t.dim() != 1 or len(t) != n:
                raise ValueError(
                    f"FeatureSplit: {name} must have shape ({n},), got {tuple(t.shape)}"
                )

    @property
    def groups(self) -> torch.Tensor:
        """Group index ``2 * target + bias`` in {0, 1, 2, 3}."""
        return 2 * self.targets + self.bias

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def group_counts(self) -> list[int]:
        return torch.bincount(self.groups, minlength=4).tolist()

    def to(self, device) -> FeatureSplit:
        return FeatureSplit(self.feats.to(device), self.targets.to(device), self.bias.to(device))

    def __len__(self) -> int:
        return len(self.feats)


# ------------------------------------------------------------------------------------------ reading
def _target_file(folder: Path, split: str) -> Path:
    plural, singular = folder / f"{split}_targets.npy", folder / f"{split}_target.npy"
    if plural.is_file() and singular.is_file():
        raise FeatureFolderError(
            f"{plural} and {singular} both exist: keep one of the two spellings"
        )
    if plural.is_file():
        return plural
    if singular.is_file():
        return singular
    raise FeatureFolderError(f"{plural} is missing (the spelling {singular.name} is accepted too)")


def _load_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FeatureFolderError(f"{path} is missing")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise FeatureFolderError(
            f"{path} is not a readable .npy array ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(arr, np.ndarray):
        raise FeatureFolderError(f"{path} holds {type(arr).__name__}, expected a single .npy array")
    return arr


def _labels(arr: np.ndarray, path: Path, what: str, binarise: bool) -> torch.Tensor:
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise FeatureFolderError(f"{path}: {what} must have shape (N,), got {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise FeatureFolderError(f"{path}: {what} must be numeric (integer), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and (not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr))):
        raise FeatureFolderError(f"{path}: {what} must hold whole numbers, got non-integer floats")
    values = np.unique(arr)
    # the reference binarises the bias attribute as b = 1 if bias > 0 (CelebA stores -1/1)
    if binarise:
        if not (set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {-1, 1}):
            raise FeatureFolderError(
                f"{path}: {what} must be binary (0/1 or -1/1), found values {values[:10].tolist()}"
            )
        arr = arr > 0
    elif not set(values.tolist()) <= {0, 1}:
        raise FeatureFolderError(
            f"{path}: {what} must be binary 0/1, found values {values[:10].tolist()}"
        )
    return torch.from_numpy(arr.astype(np.int64))


def _verify_checksums(folder: Path) -> None:
    path = folder / CHECKSUMS
    if not path.is_file():
        return
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FeatureFolderError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(table, dict):
        raise FeatureFolderError(f"{path} must map file names to SHA-256 digests")
    for name, digest in table.items():
        f = folder / name
        # Entries name files of this folder: '../x', an absolute path or a symlink out of it reach
        # other files.
        if not f.resolve().is_relative_to(folder.resolve()):
            raise FeatureFolderError(
                f"{path}: entry {name!r} points outside the folder {folder}; refused"
            )
        if not f.is_file():
            raise FeatureFolderError(f"{f} is listed in {CHECKSUMS} but missing")
        if file_digest(f) != digest:
            raise FeatureFolderError(
                f"{f}: SHA-256 differs from {CHECKSUMS} (file changed or corrupted)"
            )


def _load_split(folder: Path, split: str) -> FeatureSplit:
    feats_path = folder / f"{split}_feats.npy"
    feats = _load_array(feats_path)
    target_path = _target_file(folder, split)
    bias_path = folder / f"{split}_bias.npy"
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
        raise FeatureFolderError(
            f"{feats_path}: features must have shape (N, D) with N, D > 0, got {feats.shape}"
        )
    if feats.dtype.kind != "f":
        raise FeatureFolderError(
            f"{feats_path}: features must be floating point, got dtype {feats.dtype}"
        )
    if not np.all(np.isfinite(feats)):
        raise FeatureFolderError(f"{feats_path}: features contain NaN or infinite values")
    # float64 beyond float32's range becomes inf in the cast: check after it
    with np.errstate(over="ignore"):
        feats = np.ascontiguousarray(feats, dtype=np.float32)
    if not np.all(np.isfinite(feats)):
        raise FeatureFolderError(
            f"{feats_path}: features exceed the float32 range (|x| > "
            f"{np.finfo(np.float32).max:.3g}) and would become infinite"
        )
    targets = _labels(_load_array(target_path), target_path, "targets", binarise=False)
    bias = _labels(_load_array(bias_path), bias_path, "bias", binarise=True)
    n = feats.shape[0]
    for path, t in ((target_path, targets), (bias_path, bias)):
        if len(t) != n:
            raise FeatureFolderError(f"{path} has {len(t)} rows but {feats_path.name} has {n}")
    return FeatureSplit(
        torch.from_numpy(np.ascontiguousarray(feats, dtype=np.float32)), targets, bias
    )


def validate_splits(
    splits: dict[str, FeatureSplit], folder: Path | None = None, val_folder: Path | None = None
) -> None:
    """Check D across splits, all four groups present, and a group-balanced val split."""
    folder = Path(folder) if folder is not None else Path("<splits>")
    val_folder = Path(val_folder) if val_folder is not None else folder
    missing = [s for s in SPLITS if s not in splits]
    if missing:
        raise FeatureFolderError(f"{folder}: splits {missing} are missing")
    dim = splits["train"].dim
    if dim < MIN_DIM:
        raise FeatureFolderError(
            f"{folder / 'train_feats.npy'} has D = {dim} feature(s); at least {MIN_DIM} are needed "
            "(chapter 06 projects the features onto two principal components)"
        )
    for split in SPLITS:
        where = val_folder if split == "val" else folder
        s = splits[split]
        if s.dim != dim:
            raise FeatureFolderError(
                f"{where / f'{split}_feats.npy'} has D = {s.dim} but train_feats.npy has D = {dim}"
            )
        counts = s.group_counts()
        empty = [GROUP_NAMES[g] for g in range(4) if counts[g] == 0]
        if empty:
            raise FeatureFolderError(
                f"{where / f'{split}_bias.npy'} with {split}_targets: groups {empty} are empty "
                f"(counts {counts}); worst-group accuracy needs all four (target, bias) groups"
            )
    counts = splits["val"].group_counts()
    if len(set(counts)) != 1:
        raise FeatureFolderError(
            f"{val_folder / 'val_bias.npy'} with val_targets: the val split must be "
            f"group-balanced, got group counts {counts}; subsample every group to {min(counts)} "
            "(helpers.feature_folder.balance_groups)"
        )


def load_feature_folder(
    path: str | os.PathLike, val_path: str | os.PathLike | None = None, verbose: bool = False
) -> dict[str, FeatureSplit]:
    """Read and validate a feature folder; returns ``{"train", "val", "test"} → FeatureSplit``.

    ``val_path`` optionally names a separate folder that holds the ``val_*`` files (the reference
    keeps the balanced val set in its own folder). ``verbose`` prints the group counts per split.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FeatureFolderError(
            f"{folder} is not a directory (expected a feature folder with train/val/test files)"
        )
    val_folder = Path(val_path).expanduser() if val_path is not None else folder
    if not val_folder.is_dir():
        raise FeatureFolderError(f"{val_folder} is not a directory (val_path)")
    _verify_checksums(folder)
    if val_folder != folder:
        _verify_checksums(val_folder)
    splits = {s: _load_split(val_folder if s == "val" else folder, s) for s in SPLITS}
    validate_splits(splits, folder, val_folder)
    if verbose:
        print(describe(splits))
    return splits


def source_name(path: str | os.PathLike) -> str:
    """What a user's feature folder is called in chapter 06 and its run record: the folder's name,
    marked as a user folder where that name is the built-in default's label (a folder named
    ``offline-mnist`` must not pass for the offline MNIST features)."""
    name = Path(path).expanduser().resolve().name
    return f"{name} (user folder)" if name == OFFLINE_SOURCE else name


def describe(splits: dict[str, FeatureSplit]) -> str:
    """One line per split: N, D and the four group counts."""
    lines = []
    for name, s in splits.items():
        counts = ", ".join(f"{g} {c}" for g, c in zip(GROUP_NAMES, s.group_counts()))
        lines.append(f"{name:5s}: N = {len(s)}, D = {s.dim}; {counts}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ writing
def write_feature_folder(
    path: str | os.PathLike,
    splits: dict[str, FeatureSplit],
    meta: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``splits`` as a feature folder (float32 features, int64 labels, ``checksums.json``),
    atomically.

    The files go to a temporary directory beside ``path`` which is then renamed into place, so a
    reader never sees a half-written folder. An existing non-empty ``path`` is replaced only with
    ``overwrite=True``. The splits are validated first (same rules as the loader). ``meta``
    (JSON-serialisable) goes to ``meta.json``.
    """
    target = Path(path).expanduser()
    validate_splits(splits, target)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{target} exists and is not empty; pass overwrite=True to replace it"
            )
        check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        digests = {}
        for split in SPLITS:
            s = splits[split]
            arrays = {
                f"{split}_feats.npy": s.feats.detach().cpu().numpy().astype(np.float32),
                f"{split}_targets.npy": s.targets.detach().cpu().numpy().astype(np.int64),
                f"{split}_bias.npy": s.bias.detach().cpu().numpy().astype(np.int64),
            }
            for name, arr in arrays.items():
                with open(tmp / name, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                digests[name] = file_digest(tmp / name)
        if meta is not None:
            atomic_write_text(tmp / META, json.dumps(meta, indent=1, sort_keys=True, default=str))
        atomic_write_text(tmp / CHECKSUMS, json.dumps(digests, indent=1, sort_keys=True))
        _default_permissions(tmp)
        if target.exists():
            old = Path(
                tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old")
            )
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


FOLDER_FILES = frozenset(
    {f"{s}_{k}.npy" for s in SPLITS for k in ("feats", "targets", "target", "bias")}
    | {CHECKSUMS, META}
)


def check_replaceable(path: str | os.PathLike) -> None:
    """Refuse to let ``overwrite`` delete a folder that is not recognisably a feature folder: it
    must hold only feature-folder files (no sub-folders, nothing else) and at least one
    ``{split}_feats.npy``."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        return
    entries = list(folder.iterdir())
    foreign = sorted(
        p.name + ("/" if p.is_dir() else "")
        for p in entries
        if p.name not in FOLDER_FILES or not p.is_file() or p.is_symlink()
    )
    if entries and (foreign or not any(p.name.endswith("_feats.npy") for p in entries)):
        raise FeatureFolderError(
            f"{folder} is not a feature folder (it holds {foreign[:5] or 'no *_feats.npy'}); "
            "refusing to replace it, nothing was deleted: choose another output folder or empty "
            "this one yourself"
        )


def _default_permissions(folder: Path) -> None:
    """mkdtemp/mkstemp create private (0700/0600) entries: give the folder the usual umask-based
    modes."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.iterdir():
        os.chmod(f, 0o666 & ~umask)


def read_meta(path: str | os.PathLike) -> dict:
    """The folder's ``meta.json`` as a dict ({} when absent)."""
    f = Path(path) / META
    return json.loads(f.read_text()) if f.is_file() else {}


# ------------------------------------------------------------------------------------------ helpers
def balance_groups(targets: torch.Tensor, bias: torch.Tensor, seed: int) -> torch.Tensor:
    """Sorted indices of a group-balanced subsample: every group cut to the smallest group's size
    (seeded)."""
    g = 2 * targets.long() + (bias > 0).long()
    counts = torch.bincount(g, minlength=4)
    if int(counts.min()) == 0:
        raise ValueError(f"balance_groups: a group is empty (group counts {counts.tolist()})")
    n = int(counts.min())
    gen = generator(seed)
    keep = []
    for k in range(4):
        idx = torch.nonzero(g == k).flatten()
        keep.append(idx[torch.randperm(len(idx), generator=gen)[:n]])
    return torch.cat(keep).sort().values


def make_tiny_feature_folder(
    path: str | os.PathLike,
    seed: int = 0,
    dim: int = 16,
    train_groups: tuple[int, int, int, int] = (120, 12, 6, 40),
    n_val_per_group: int = 10,
    n_test_per_group: int = 12,
) -> Path:
    """A small synthetic, valid feature folder for tests and the user-folder code path.

    Features are Gaussian with a weak "target" direction and a strong "bias" direction (so ERM leans
    on the bias), written with :func:`write_feature_folder` (replacing ``path`` if it exists).
    Returns the folder path.
    """
    gen = generator(seed)
    u_target = torch.randn(dim, generator=gen)
    u_bias = torch.randn(dim, generator=gen)
    u_target, u_bias = u_target / u_target.norm(), u_bias / u_bias.norm()

    def split(counts) -> FeatureSplit:
        g = torch.cat([torch.full((int(c),), k, dtype=torch.long) for k, c in enumerate(counts)])
        y, b = g // 2, g % 2
        x = torch.randn(len(g), dim, generator=gen)
        x = (
            x
            + 1.0 * (2 * y - 1).float()[:, None] * u_target
            + 3.0 * (2 * b - 1).float()[:, None] * u_bias
        )
        perm = torch.randperm(len(g), generator=gen)
        return FeatureSplit(x[perm].float(), y[perm], b[perm])

    splits = {
        "train": split(train_groups),
        "val": split([n_val_per_group] * 4),
        "test": split([n_test_per_group] * 4),
    }
    return write_feature_folder(
        path,
        splits,
        meta={"source": "make_tiny_feature_folder", "seed": int(seed), "dim": dim},
        overwrite=True,
    )


__all__ = [
    "FeatureSplit",
    "FeatureFolderError",
    "load_feature_folder",
    "write_feature_folder",
    "validate_splits",
    "describe",
    "read_meta",
    "balance_groups",
    "make_tiny_feature_folder",
    "check_replaceable",
    "content_digest",
    "source_name",
    "MIN_DIM",
    "OFFLINE_SOURCE",
    "SPLITS",
    "GROUP_NAMES",
]


def content_digest(path: str | os.PathLike) -> str:
    """SHA-256 over the names and bytes of every array file in a feature folder: the folder's
    identity in cache keys (a path says nothing once its files are replaced)."""
    folder = Path(path)
    h = hashlib.sha256()
    for file in sorted(folder.glob("*.npy")):
        h.update(file.name.encode())
        h.update(file_digest(file).encode())
    return h.hexdigest()
