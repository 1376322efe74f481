"""Where the book keeps data, checkpoints and results, and how it writes them: atomically and
checksummed.

* Paths: the cache root is, in order of precedence, an explicit ``root`` argument, the environment
  variable ``SHORTCUT_BOOK_DATA``, or ``data/`` at the repository root (git-ignored).
* Atomic writes: a reader never sees a half-written data file or checkpoint.
* Checkpoints keyed by a run's configuration: load when present, otherwise train and save. A chapter
  re-run with the same parameters loads its trained networks in seconds (the UvA pattern). Weights
  and their SHA-256 are one file (a header line with the digest, then ``torch.save``'s bytes),
  written atomically, so two processes saving the same checkpoint at once can never leave weights
  and checksum from different writers; the payload is loaded with
  ``torch.load(..., weights_only=True)`` (:func:`read_checkpoint`). A file whose checksum does not
  match is ignored and the run retrains; one that matches but cannot be loaded (truncated, wrong
  tensors, a pickle ``weights_only`` refuses, not this format) is moved aside as
  ``<name>.pt.unloadable`` and retrained.
* Errors name the path: a cache root that is not a directory, a write that fails (disk full,
  read-only) — :class:`CacheError` / the ``OSError`` carry the file name.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV_VAR = "SHORTCUT_BOOK_DATA"


class CacheError(ValueError):
    """The cache root cannot be used (it is a file, or cannot be created); the message names it."""


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Return the data cache directory, creating it if needed."""
    source = "the cache root"
    if root is None:
        root = os.environ.get(ENV_VAR) or REPO_ROOT / "data"
        if os.environ.get(ENV_VAR):
            source = f"${ENV_VAR}"
    path = Path(root).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise CacheError(f"{source} ({path}) is not a directory: point it at a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheError(f"{source} ({path}) cannot be created: {exc.strerror or exc}") from None
    return path


def shown_path(path: str | os.PathLike) -> str:
    """A path as printed in a chapter or an error: relative to the repository or to the data cache
    (``$SHORTCUT_BOOK_DATA/…``), so that executed pages carry no machine's directory layout."""
    path = Path(path).resolve()
    if path.is_relative_to(REPO_ROOT):
        return path.relative_to(REPO_ROOT).as_posix()
    root = cache_root().resolve()
    if path.is_relative_to(root):
        return "$SHORTCUT_BOOK_DATA/" + path.relative_to(root).as_posix()
    return str(path)


def checkpoint_dir(root: str | os.PathLike | None = None) -> Path:
    """Return ``<cache root>/checkpoints``, creating it if needed."""
    path = cache_root(root) / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------ atomic writes
def file_digest(path: str | os.PathLike, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:  # another user's process
        return True
    except (ProcessLookupError, OverflowError, ValueError):
        return False
    return True


# a write of even a large checkpoint takes seconds; also covers a shared folder's other hosts
STALE_AFTER_S = 600


def clean_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files ``.<name>.<random>.<pid>.tmp`` that a killed writer left in
    ``directory``: its process is gone and the file is older than STALE_AFTER_S (files named before
    the PID was added: older than a day). Returns what was deleted."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        pid = tmp.name.rsplit(".", 2)[-2]
        try:
            age = time.time() - tmp.stat().st_mtime
            stale = (
                (age > STALE_AFTER_S and not pid_alive(int(pid))) if pid.isdigit() else age > 86400
            )
            if stale and tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # another process cleaned it first
            continue
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temporary file in the same directory, fsync it, then rename it over
    ``path``.

    The file gets the usual umask-based mode (mkstemp alone would leave it 0600); the temporary
    file's name carries the writer's PID so that one left by a killed run is recognised and deleted
    by the next write.
    An ``OSError`` (disk full, read-only folder, ...) is raised again with ``path`` as its file
    name, so the message says which file could not be written; ``path`` is then unchanged.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_temp_files(path.parent)
        fd, tmp = tempfile.mkstemp(
            dir=path.parent, prefix=f".{path.name}.", suffix=f".{os.getpid()}.tmp"
        )
    except OSError as exc:
        raise _naming(exc, path) from None
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _naming(exc, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` again, as the same type, with ``path`` as its file name: ``[Errno 28] No space left
    on device: '<path>'`` (the temporary file or the folder it failed on says less)."""
    if exc.errno is None:
        return type(exc)(f"cannot write {path}: {exc}")
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# -------------------------------------------------------------------------------------- checkpoints
CACHE_FORMAT = 2  # 2: the checksum is inside the checkpoint file


def config_key(config: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable configuration."""
    blob = json.dumps({"format": CACHE_FORMAT, **config}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def checkpoint_path(name: str, config: Mapping[str, Any], root=None) -> Path:
    return checkpoint_dir(root) / f"{name}-{config_key(config)}.pt"


# The first line of a checkpoint file: this header, then the SHA-256 of the rest of the file (the
# torch.save payload) in hex, then a newline. One file, one atomic rename: weights and checksum
# always come from the same writer.
CHECKPOINT_MAGIC = b"shortcut-book checkpoint 2 sha256="


def checkpoint_bytes(payload: bytes) -> bytes:
    """The file content for a ``torch.save`` payload: header line with its digest, then it."""
    return CHECKPOINT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload


class ChecksumMismatch(ValueError):
    """A checkpoint file whose payload does not match the digest in its header."""


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The saved ``{"config", "state", "extra"}`` of a checkpoint file, its checksum verified and
    its payload loaded with ``weights_only=True``. Raises :class:`ChecksumMismatch` for a payload
    that does not match its header, ``ValueError`` for a file that is not a checkpoint."""
    data = Path(path).read_bytes()
    head, sep, payload = data.partition(b"\n")
    if not head.startswith(CHECKPOINT_MAGIC) or not sep:
        raise ValueError("not a checkpoint of this book (no checksum header)")
    if hashlib.sha256(payload).hexdigest().encode() != head[len(CHECKPOINT_MAGIC) :]:
        raise ChecksumMismatch("checksum mismatch")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def save_checkpoint(
    path: Path, modules: Mapping[str, nn.Module], extra: Mapping[str, Any], config: Mapping
) -> None:
    buf = io.BytesIO()
    torch.save(
        {
            "config": json.dumps(config, sort_keys=True, default=str),
            "state": {
                k: {n: t.detach().cpu() for n, t in m.state_dict().items()}
                for k, m in modules.items()
            },
            "extra": dict(extra),
        },
        buf,
    )
    atomic_write_bytes(path, checkpoint_bytes(buf.getvalue()))
    # a sidecar of the format before the checksum moved into the file
    path.with_suffix(".sha256").unlink(missing_ok=True)


def load_checkpoint(path: Path, modules: Mapping[str, nn.Module]) -> dict | None:
    """Load weights into ``modules`` and return the saved ``extra``; None if absent or corrupt."""
    clean_stale_temp_files(
        path.parent
    )  # also when this run only reads: a killed save left up to 16 MB behind
    if not path.is_file():
        return None
    # A failed load_state_dict may have copied some tensors already: keep the initial weights to put
    # them back, so the retraining starts exactly as a run without a checkpoint would.
    initial = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in modules.items()}
    try:
        blob = read_checkpoint(path)
        if set(blob["state"]) != set(modules):
            return None
        for k, m in modules.items():
            m.load_state_dict(blob["state"][k])
        return dict(blob["extra"])
    except ChecksumMismatch:
        print(f"checkpoint {path.name}: checksum mismatch, ignoring it and retraining")
        return None
    except Exception as exc:  # noqa: BLE001 - truncated zip, wrong tensors, a pickle weights_only refuses, ...
        # The checksum matches (or there is none), so the file would fail the same way on every
        # run: set it aside and retrain.
        for k, m in modules.items():
            m.load_state_dict(initial[k])
        aside = path.with_name(f"{path.name}.unloadable")
        os.replace(path, aside)
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        print(
            f"checkpoint {path.name} cannot be loaded ({type(exc).__name__}: {reason}); moved it "
            f"to {aside.name} and retraining"
        )
        return None


# What every cached_run of this process did: one entry per network group, trained or loaded, with
# the seconds its training took (for a loaded one: the original run's, when its checkpoint says).
# A chapter's record sums it (helpers.book.chapter.ChapterRun.finish), so a re-execution from the
# cache reports how long training took, not only how long the re-execution did.
_LEDGER: list[dict] = []


def training_ledger() -> list[dict]:
    """Copies of this process's :func:`cached_run` entries: ``name``, ``from_cache`` and
    ``train_seconds`` (None for a checkpoint saved before the time was recorded)."""
    return [dict(e) for e in _LEDGER]


def reset_training_ledger() -> None:
    _LEDGER.clear()


def cached_run(
    name: str,
    config: Mapping[str, Any],
    modules: Mapping[str, nn.Module],
    train_fn: Callable[[], Mapping[str, Any]],
    *,
    root=None,
    force: bool = False,
) -> dict:
    """Load ``modules`` from the checkpoint for ``config`` or call ``train_fn()`` and save them.

    ``train_fn`` trains the modules in place and returns a dict of plain values (history rows,
    selected epoch, …) that is stored with the weights and returned on every later call, with
    ``train_seconds`` (the wall time of ``train_fn``) added. ``force=True`` retrains. Each call is
    noted in :func:`training_ledger`.
    """
    path = checkpoint_path(name, config, root)
    if not force and os.environ.get("SHORTCUT_BOOK_RETRAIN") != "1":
        extra = load_checkpoint(path, modules)
        if extra is not None:
            _LEDGER.append(
                {"name": name, "from_cache": True, "train_seconds": extra.get("train_seconds")}
            )
            return {**extra, "from_cache": True}
    started = time.perf_counter()
    extra = dict(train_fn())
    extra["train_seconds"] = round(time.perf_counter() - started, 3)
    save_checkpoint(path, modules, extra, dict(config))
    _LEDGER.append({"name": name, "from_cache": False, "train_seconds": extra["train_seconds"]})
    return {**extra, "from_cache": False}
