"""Checkpoints and atomic writes under hostile or unlucky conditions (issue 12)."""

import errno
import io
import os
import time

import pytest
import torch
from torch import nn

from helpers.cache import cached_run, checkpoint_bytes, checkpoint_path, read_checkpoint


class _RunsCode:
    """Unpickling this calls ``os.mkdir(marker)``: proof that code ran (``weights_only=True`` must
    refuse it)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _with_sidecar(path, data: bytes) -> None:
    """Write ``data`` as the checkpoint's payload with a *matching* SHA-256 header: only loading
    can tell it is bad."""
    path.write_bytes(checkpoint_bytes(data))


def _blob(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "damage", ["truncated", "wrong tensors", "malicious pickle", "not a checkpoint"]
)
def test_unloadable_checkpoint_is_named_moved_aside_and_retrained(
    tmp_path, monkeypatch, capsys, damage
):
    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)
    config = {"case": damage}
    model = nn.Linear(3, 2)
    cached_run("net", config, {"m": model}, lambda: {"ok": 1}, root=tmp_path)
    path = checkpoint_path("net", config, tmp_path)
    marker = tmp_path / "code-ran"
    good = path.read_bytes()
    data = {
        "truncated": good[: len(good) // 2],
        "wrong tensors": _blob(
            {"config": "{}", "state": {"m": nn.Linear(5, 7).state_dict()}, "extra": {}}
        ),
        "malicious pickle": _blob(
            {"config": "{}", "state": {"m": _RunsCode(str(marker))}, "extra": {}}
        ),
        "not a checkpoint": _blob([1, 2, 3]),
    }[damage]
    _with_sidecar(path, data)
    capsys.readouterr()
    calls = []
    out = cached_run(
        "net", config, {"m": nn.Linear(3, 2)}, lambda: calls.append(1) or {"ok": 2}, root=tmp_path
    )
    message = capsys.readouterr().out
    assert not marker.exists(), "unpickling the checkpoint ran code"
    assert calls and not out["from_cache"] and out["ok"] == 2
    assert path.name in message and "cannot be loaded" in message
    aside = [p for p in tmp_path.rglob("*") if p.name.startswith(path.name) and p != path]
    assert len(aside) == 1 and aside[0].read_bytes() == checkpoint_bytes(data), (
        "the bad file must be kept aside, not deleted"
    )
    # the retrained checkpoint replaced it and loads again
    again = cached_run(
        "net", config, {"m": nn.Linear(3, 2)}, lambda: calls.append(1) or {}, root=tmp_path
    )
    assert again["from_cache"] and again["ok"] == 2 and len(calls) == 1


def test_partly_loaded_modules_are_restored_before_retraining(tmp_path, monkeypatch):
    """Two modules, the second one's tensors wrong: the first must not keep the checkpoint's
    weights."""
    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    cached_run("pair", {}, {"a": a, "b": b}, lambda: {}, root=tmp_path)
    path = checkpoint_path("pair", {}, tmp_path)
    blob = read_checkpoint(path)
    blob["state"]["b"] = nn.Linear(4, 4).state_dict()
    _with_sidecar(path, _blob(blob))
    fresh_a = nn.Linear(3, 2)
    initial = {n: t.clone() for n, t in fresh_a.state_dict().items()}
    seen = {}
    cached_run(
        "pair",
        {},
        {"a": fresh_a, "b": nn.Linear(3, 2)},
        lambda: seen.update({n: t.clone() for n, t in fresh_a.state_dict().items()}) or {},
        root=tmp_path,
    )
    assert all(torch.equal(seen[n], initial[n]) for n in initial)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    from helpers.cache import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "result.json", "{}\n")
        save_dir = tmp_path / "ck"
        cached_run("net", {}, {"m": nn.Linear(2, 2)}, lambda: {}, root=save_dir)
    finally:
        os.umask(old)
    files = [tmp_path / "result.json", *(save_dir / "checkpoints").iterdir()]
    assert len(files) == 2  # the checksum is inside the checkpoint
    assert {oct(f.stat().st_mode & 0o777) for f in files} == {oct(0o666 & ~umask)}


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temp_files_of_a_killed_save_are_cleaned_next_time(tmp_path, monkeypatch):
    """SIGKILL during save_checkpoint leaves ``.<name>.<random>.<pid>.tmp``: the next write or read
    of the folder deletes it once its process is gone and it is old; a fresh one or a live writer's
    is kept."""
    import time

    from helpers.cache import atomic_write_text, checkpoint_dir

    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)
    folder = checkpoint_dir(tmp_path)
    dead = _dead_pid()
    stale = folder / f".net-0123.pt.abcd1234.{dead}.tmp"
    fresh_dead = folder / f".net-4567.pt.efgh5678.{dead}.tmp"
    live = folder / f".net-89ab.pt.ijkl9012.{os.getpid()}.tmp"
    old_style, old_style_recent = (
        folder / ".net-cdef.pt.k2j4h5g6.tmp",
        folder / ".net-cdf0.pt.a1b2c3d4.tmp",
    )
    for f in (stale, fresh_dead, live, old_style, old_style_recent):
        f.write_bytes(b"x" * 1000)
    hour_ago, two_days_ago = time.time() - 3600, time.time() - 2 * 86400
    for f, t in (
        (stale, hour_ago),
        (live, hour_ago),
        (old_style, two_days_ago),
        (old_style_recent, hour_ago),
    ):
        os.utime(f, (t, t))
    cached_run(
        "other", {}, {"m": nn.Linear(2, 2)}, lambda: {}, root=tmp_path
    )  # reads, then writes the folder
    assert not stale.exists() and fresh_dead.exists() and live.exists()
    assert not old_style.exists() and old_style_recent.exists()
    # a writer's own temporary files are named so that this works: .<name>.<random>.<pid>.tmp
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: seen.append(str(a)) or real_replace(a, b))
    atomic_write_text(folder / "x.json", "{}")
    assert (
        seen
        and seen[0].endswith(f".{os.getpid()}.tmp")
        and os.path.basename(seen[0]).startswith(".x.json.")
    )


def test_shown_paths_carry_no_machine_layout(tmp_path, monkeypatch):
    from helpers.cache import REPO_ROOT, shown_path

    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(tmp_path))
    assert shown_path(REPO_ROOT / "book" / "x.ipynb") == "book/x.ipynb"
    assert (
        shown_path(tmp_path / "mnist_waterbirds" / "abc")
        == "$SHORTCUT_BOOK_DATA/mnist_waterbirds/abc"
    )


# ----------------------------------------------------------------------- issue 29: items 2, 10, 11
def _save_rounds(path, rank, rounds, barrier, bad):
    """One of several writers: every round, all save ``path`` at the same instant (weights and
    extra name the writer and round); then writer 0 loads it and checks that weights and extra
    come from one writer, i.e. that the checkpoint is a consistent unit."""
    from helpers.cache import load_checkpoint, save_checkpoint

    for r in range(rounds):
        m = nn.Linear(128, 128)
        with torch.no_grad():
            m.weight.fill_(1000 * rank + r)
        barrier.wait()
        save_checkpoint(path, {"m": m}, {"rank": rank, "round": r}, {})
        barrier.wait()
        if rank == 0:
            fresh = nn.Linear(128, 128)
            extra = load_checkpoint(path, {"m": fresh})
            if extra is None or float(fresh.weight[0, 0]) != 1000 * extra["rank"] + r:
                bad.value += 1
        barrier.wait()


def test_concurrent_writers_never_leave_a_mismatched_checkpoint(tmp_path):
    """Item 2: two readers re-running a chapter on a shared cache saved the same checkpoint at the
    same instant; weights from one writer and checksum from the other made the next run retrain.
    Real processes, synchronised by a barrier before every save."""
    import multiprocessing

    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    writers, rounds = 3, 30
    barrier, bad = ctx.Barrier(writers), ctx.Value("i", 0)
    path = tmp_path / "checkpoints" / "shared-0123.pt"
    path.parent.mkdir()
    procs = [
        ctx.Process(target=_save_rounds, args=(path, k, rounds, barrier, bad))
        for k in range(writers)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert bad.value == 0, f"{bad.value} of {rounds} rounds left an inconsistent checkpoint"
    assert sorted(f.name for f in path.parent.iterdir()) == [path.name]  # no sidecar, no temp


def test_a_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path, monkeypatch):
    """Item 11: ``[Errno 28] No space left on device`` named no file (the kernel can report it
    at fsync, as NFS and delayed allocation do). The previous checkpoint stays, no temp file is
    left."""
    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)
    config = {"case": "full disk"}
    cached_run("net", config, {"m": nn.Linear(3, 2)}, lambda: {"n": 1}, root=tmp_path)
    path = checkpoint_path("net", config, tmp_path)
    before = path.read_bytes()

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left on device") as err:
        cached_run(
            "net", config, {"m": nn.Linear(3, 2)}, lambda: {"n": 2}, root=tmp_path, force=True
        )
    assert err.value.errno == errno.ENOSPC
    assert str(path) in str(err.value) and err.value.filename == str(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _small_tmpfs_available() -> bool:
    import shutil
    import subprocess

    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _small_tmpfs_available(), reason="needs unshare -rm and a tmpfs mount")
def test_a_really_full_tmpfs_names_the_checkpoint(tmp_path):
    """Item 11 on a real 64 KiB tmpfs (a private mount namespace, so nothing else sees it)."""
    import subprocess
    import sys

    from helpers.cache import REPO_ROOT

    cache = tmp_path / "cache"
    cache.mkdir()
    script = (
        "import torch\n"
        "from helpers.cache import cached_run\n"
        "try:\n"
        "    net = {'m': torch.nn.Linear(256, 256)}\n"
        f"    cached_run('big', {{}}, net, dict, root={str(cache)!r})\n"
        "except OSError as exc:\n"
        "    print('ERROR', exc)\n"
    )
    out = subprocess.run(
        [
            "unshare",
            "-rm",
            "sh",
            "-c",
            'mount -t tmpfs -o size=64k tmpfs "$1" && exec "$2" -c "$3"',
            "sh",
            str(cache),
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
    )
    assert "ERROR [Errno 28] No space left on device" in out.stdout, out.stdout + out.stderr
    assert "checkpoints/big-" in out.stdout, out.stdout


def test_a_cache_root_that_is_a_file_is_named(tmp_path, monkeypatch):
    """Item 10 (the cache side): ``SHORTCUT_BOOK_DATA`` pointing at a regular file."""
    from helpers.cache import CacheError, cache_root

    not_a_folder = tmp_path / "data.txt"
    not_a_folder.write_text("x")
    monkeypatch.setenv("SHORTCUT_BOOK_DATA", str(not_a_folder))
    with pytest.raises(CacheError, match=r"\$SHORTCUT_BOOK_DATA .*data.txt\) is not a directory"):
        cache_root()


def test_the_ledger_times_training_and_keeps_the_time_with_the_checkpoint(tmp_path, monkeypatch):
    from helpers.book.chapter import training_summary
    from helpers.cache import cached_run, reset_training_ledger, training_ledger

    monkeypatch.delenv("SHORTCUT_BOOK_RETRAIN", raising=False)  # `make test` sets it
    reset_training_ledger()
    net = nn.Linear(2, 2)

    def train():
        time.sleep(0.05)
        return {"note": 1}

    first = cached_run("t", {"a": 1}, {"net": net}, train, root=tmp_path)
    second = cached_run("t", {"a": 1}, {"net": net}, train, root=tmp_path)
    assert not first["from_cache"] and second["from_cache"]
    assert first["train_seconds"] >= 0.05
    assert second["train_seconds"] == first["train_seconds"]  # the original run's time
    summary = training_summary(training_ledger())
    assert summary["networks_trained"] == 1 and summary["networks_loaded"] == 1
    assert summary["train_time_s"] == round(first["train_seconds"], 1)
    assert summary["loaded_original_train_time_s"] == round(first["train_seconds"], 1)
