"""Fan a chapter's training grid out to workers and back in through the checkpoint cache.

    python -m helpers.book sweep --chapters 05 --profile full --executor local --workers 2
    python -m helpers.book sweep --chapters 05 --profile full --executor slurm --device cuda \
        --partition gpu --time-min 120 --gpus-per-cell 1
    python -m helpers.book sweep --chapters 05 --profile full --executor ray --device cuda

A chapter's grid (``GRIDS``) is a list of stages of cells; a cell is a plain call of the chapter's
grid module (``run_cell(run, cell)``) that trains into the same checksummed, content-keyed cache
the chapter reads (:meth:`ChapterRun.cache_config`), so the chapter executed afterwards loads every
cell and only assembles tables and figures. Cells already in the cache are skipped, so a re-run
submits only the missing and the failed ones, and an interrupted sweep keeps every cell that
finished (each checkpoint is written atomically). The engines are existing ones: worker processes
(``local``), Slurm through submitit (``slurm``; ``--slurm-cluster local`` or ``debug`` runs
submitit's own local or in-process executors), or a running Ray cluster (``ray``).
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import json
import multiprocessing
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from helpers.book.chapter import ChapterRun
from helpers.book.closure import training_code_hash
from helpers.book.params import ParameterError, profile_values, validate
from helpers.cache import ENV_VAR, REPO_ROOT, cache_root, config_key, shown_path
from helpers.device import pick_device

# chapter → module with stages/is_done/run_cell
GRIDS = {
    "02_fisher_regularization": "helpers.methods.fisher_grid",
    "05_rebias": "helpers.methods.rebias_grid",
    "08_benchmark": "helpers.methods.benchmark_grid",
}
EXECUTORS = ("local", "slurm", "ray")
NOTEBOOKS = REPO_ROOT / "notebooks"


# ------------------------------------------------------------------------------ the chapter's grid
def notebook_defaults(src: Path) -> dict:
    """The values of the notebook's ``parameters`` cell (plain ``name = literal`` lines)."""
    cells = json.loads(src.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        raise ValueError(f"{src.name}: expected one cell tagged 'parameters', found {len(tagged)}")
    values = {}
    for node in ast.parse("".join(tagged[0]["source"])).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def chapter_run(chapter: str, profile: str, device: str | None = None) -> ChapterRun:
    """The run a chapter executed at ``profile`` would make (same parameters, code hash and device
    type, hence the same cache keys); ``device`` overrides the parameter (e.g. ``cuda`` for workers
    on GPU nodes while this process runs on a login node without one)."""
    if chapter not in GRIDS:
        raise ParameterError(
            chapter, "chapters", f"has no sweepable grid; chapters with one: {sorted(GRIDS)}"
        )
    src = NOTEBOOKS / f"{chapter}.ipynb"
    values = {**notebook_defaults(src), **profile_values(chapter, profile)}
    if device is not None:
        values["device"] = device
    params = validate(chapter, values)
    return ChapterRun(chapter, params, _device(params["device"]), training_code_hash(src))


def _device(name: str) -> torch.device:
    # the key needs only the device type: a GPU this process cannot see is still "cuda"
    return torch.device(name) if name in ("cuda", "mps") else pick_device(name)


def grid_module(chapter: str):
    return importlib.import_module(GRIDS[chapter])


def cell_id(cell: Mapping[str, Any]) -> str:
    return (
        "_".join(f"{k}{v}" for k, v in cell.items() if v is not None) + "-" + config_key(cell)[:8]
    )


# ------------------------------------------------------------------------------ one job
def exit_with_parent(parent: int, interval: float = 5.0) -> threading.Thread:
    """Stop this process when ``parent`` is gone: a ProcessPoolExecutor worker whose sweep was
    killed would otherwise finish its cell first, hours of CPU on a full profile (its epoch state
    is saved, so the next sweep resumes it)."""

    def watch() -> None:
        while True:
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(interval)

    thread = threading.Thread(target=watch, daemon=True, name="exit-with-parent")
    thread.start()
    return thread


def run_job(job: Mapping[str, Any]) -> dict:
    """Train one cell (in a worker process, a Slurm job or a Ray task) into the shared cache; its
    output goes to ``job["log"]``. Returns the wall time; raises on failure. The job names its grid
    module (``job["grid"]``), so a worker needs no lookup in a registry it may not share."""
    os.environ[ENV_VAR] = job["cache"]
    if job.get("parent") is not None:
        exit_with_parent(job["parent"])
    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    if job.get("gpu") is not None and torch.cuda.is_available():
        torch.cuda.set_device(job["gpu"])
    run = ChapterRun(
        job["chapter"], dict(job["params"]), _device(job["params"]["device"]), job["code"]
    )
    t0 = time.perf_counter()
    log = Path(job["log"])
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out, contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        print(f"cell {json.dumps(job['cell'])}", flush=True)
        try:
            importlib.import_module(job["grid"]).run_cell(run, job["cell"])
        except BaseException:
            traceback.print_exc()
            raise
    return {"seconds": round(time.perf_counter() - t0, 2)}


@dataclass
class Outcome:
    job: dict
    ok: bool
    info: str = ""  # the wall time, or the error


# ------------------------------------------------------------------------------ executors
class LocalExecutor:
    """Worker processes on this machine: ``workers`` of them (default: one per GPU, else 2), each
    with an equal share of the CPU threads and, with GPUs, its own GPU."""

    def __init__(self, workers: int | None = None, threads: int | None = None):
        gpus = torch.cuda.device_count()
        self.workers = workers or gpus or 2
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")
        self.gpus = gpus
        # float sums depend on the thread count: pass the sequential run's count to reproduce it
        self.threads = threads or max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, jobs: Sequence[dict]) -> Iterator[Outcome]:
        ctx = multiprocessing.get_context("spawn")  # no forked CUDA or OpenMP state
        with ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx) as pool:
            futures = {}
            for i, job in enumerate(jobs):
                job = {
                    **job,
                    "threads": self.threads,
                    "gpu": i % self.gpus if self.gpus else None,
                    "parent": os.getpid(),
                }
                futures[pool.submit(run_job, job)] = job
            for fut in as_completed(futures):
                try:
                    yield Outcome(futures[fut], True, f"{fut.result()['seconds']} s")
                except Exception as exc:  # noqa: BLE001 - reported per cell, the others still land
                    yield Outcome(futures[fut], False, f"{type(exc).__name__}: {exc}")


class SlurmExecutor:
    """One Slurm job per cell through submitit (``cluster``: None = Slurm, or submitit's
    ``local`` / ``debug`` executors, which need no cluster)."""

    def __init__(
        self,
        folder: Path,
        *,
        cluster: str | None,
        partition: str | None,
        time_min: int,
        gpus: int,
        cpus: int,
    ):
        try:
            import submitit
        except ImportError as exc:
            raise RuntimeError("--executor slurm needs submitit: pip install '.[sweep]'") from exc
        self.submitit = submitit
        self.executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
        extra = {"slurm_partition": partition} if partition else {}
        self.executor.update_parameters(
            timeout_min=time_min, gpus_per_node=gpus, cpus_per_task=cpus, nodes=1, **extra
        )
        self.cpus = cpus

    def run(self, jobs: Sequence[dict]) -> Iterator[Outcome]:
        submitted = {}
        for job in jobs:
            job = {**job, "threads": self.cpus}
            submitted[self.executor.submit(run_job, job)] = job
        for sj in self.submitit.helpers.as_completed(list(submitted), poll_frequency=1):
            try:
                yield Outcome(submitted[sj], True, f"{sj.result()['seconds']} s")
            except Exception as exc:  # noqa: BLE001
                yield Outcome(submitted[sj], False, f"{type(exc).__name__}: {str(exc)[-500:]}")


class RayExecutor:
    """One Ray task per cell on a running Ray cluster (``ray start --head`` first)."""

    def __init__(self, address: str | None, gpus: int, cpus: int):
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError("--executor ray needs ray: pip install '.[ray]'") from exc
        try:
            ray.init(address=address or "auto", ignore_reinit_error=True, log_to_driver=False)
        except ConnectionError as exc:
            raise RuntimeError(
                f"no running Ray cluster at {address or 'auto'}: start one with `ray start --head`"
            ) from exc
        self.ray, self.cpus = ray, cpus
        self.task = ray.remote(num_gpus=gpus, num_cpus=cpus)(run_job)

    def run(self, jobs: Sequence[dict]) -> Iterator[Outcome]:
        pending = {self.task.remote({**job, "threads": self.cpus}): job for job in jobs}
        while pending:
            done, _ = self.ray.wait(list(pending), num_returns=1)
            job = pending.pop(done[0])
            try:
                yield Outcome(job, True, f"{self.ray.get(done[0])['seconds']} s")
            except Exception as exc:  # noqa: BLE001
                yield Outcome(job, False, f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------------------ the sweep
@dataclass
class SweepSummary:
    cells: int = 0
    cached: int = 0
    ran: int = 0
    failed: list[Outcome] = field(default_factory=list)
    seconds: float = 0.0
    stopped_at_stage: int | None = None


def sweep(run: ChapterRun, executor, *, log_dir: Path, progress: bool = True) -> SweepSummary:
    """Run every stage of the chapter's grid: list its cells, submit the ones not in the cache,
    wait for them. A stage with failures stops the sweep (later stages depend on it)."""
    grid = grid_module(run.chapter)
    summary, t0 = SweepSummary(), time.perf_counter()
    stages = grid.stages(run)
    for k, stage in enumerate(stages, start=1):
        cells = stage(run)
        missing = [c for c in cells if not grid.is_done(run, c)]
        summary.cells += len(cells)
        summary.cached += len(cells) - len(missing)
        print(
            f"stage {k}/{len(stages)}: {len(cells)} cells, {len(cells) - len(missing)} in the "
            f"cache, {len(missing)} to run",
            flush=True,
        )
        jobs = [
            {
                "chapter": run.chapter,
                "grid": GRIDS[run.chapter],
                "params": run.params,
                "code": run.code,
                "cell": cell,
                "cache": str(cache_root()),
                "log": str(log_dir / f"{cell_id(cell)}.log"),
            }
            for cell in missing
        ]
        bar = tqdm(
            total=len(jobs), desc=f"stage {k}", unit="cell", disable=not progress or not jobs
        )
        failed_here = []
        for outcome in executor.run(jobs):
            if outcome.ok:
                summary.ran += 1
            else:
                failed_here.append(outcome)
            bar.update()
        summary.failed += failed_here
        bar.close()
        if failed_here:
            summary.stopped_at_stage = k if k < len(stages) else None
            break
    summary.seconds = round(time.perf_counter() - t0, 1)
    return summary


def report(summary: SweepSummary) -> str:
    lines = [
        f"{summary.cells} cells: {summary.cached} were in the cache, {summary.ran} trained, "
        f"{len(summary.failed)} failed ({summary.seconds} s)"
    ]
    for o in summary.failed:
        log = Path(o.job["log"])
        tail = log.read_text().strip().splitlines()[-3:] if log.is_file() else []
        lines.append(f"  FAILED {json.dumps(o.job['cell'])}: {o.info}")
        lines.append(f"    log: {shown_path(log)}" + "".join(f"\n      {t}" for t in tail))
    if summary.stopped_at_stage:
        lines.append(
            f"stage {summary.stopped_at_stage} failed, so the later stages were not listed; fix "
            "the failures and run the sweep again (finished cells are kept)"
        )
    return "\n".join(lines)


def make_executor(args, log_dir: Path):
    if args.executor == "local":
        return LocalExecutor(args.workers, args.threads)
    if args.executor == "slurm":
        return SlurmExecutor(
            log_dir / "submitit",
            cluster=None if args.slurm_cluster == "slurm" else args.slurm_cluster,
            partition=args.partition,
            time_min=args.time_min,
            gpus=args.gpus_per_cell,
            cpus=args.cpus_per_cell,
        )
    return RayExecutor(args.ray_address, args.gpus_per_cell, args.cpus_per_cell)


def add_arguments(p) -> None:
    p.add_argument("--chapters", nargs=1, required=True, help="the chapter (number or stem)")
    p.add_argument("--profile", default="quick")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument(
        "--workers", type=int, default=None, help="local: processes (default: one per GPU, else 2)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="local: CPU threads per worker (default: the cores shared equally)",
    )
    p.add_argument(
        "--device", default=None, help="override the chapter's device (e.g. cuda for GPU nodes)"
    )
    p.add_argument("--partition", default=None, help="slurm: partition")
    p.add_argument(
        "--time-min", type=int, default=120, help="slurm: time limit per cell in minutes"
    )
    p.add_argument("--gpus-per-cell", type=int, default=0, help="slurm / ray: GPUs per cell")
    p.add_argument("--cpus-per-cell", type=int, default=2, help="slurm / ray: CPUs per cell")
    p.add_argument(
        "--slurm-cluster",
        choices=["slurm", "local", "debug"],
        default="slurm",
        help="slurm: submitit's cluster (local/debug run without Slurm, e.g. to test)",
    )
    p.add_argument("--ray-address", default=None, help="ray: cluster address (default: auto)")


def main(args, chapter: str) -> int:
    """``python -m helpers.book sweep``: 0 when every cell is in the cache, 1 when a cell failed,
    2 for bad input (a parameter, a missing optional package, no Ray cluster)."""
    try:
        run = chapter_run(chapter, args.profile, args.device)
        log_dir = cache_root() / "sweeps" / f"{chapter}-{args.profile}"
        executor = make_executor(args, log_dir)
        summary = sweep(run, executor, log_dir=log_dir)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report(summary))
    return 1 if summary.failed else 0
