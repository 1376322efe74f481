"""Chapter 02's training runs as plain function calls: one cell = one regulariser setting, in one
data setting (the reference's, or the teaching case's amplified colour code), at one seed.

The chapter and ``python -m helpers.book sweep --chapters 02`` call the same :func:`train_cell`,
which trains through the checksummed, content-keyed checkpoint cache (key
:meth:`ChapterRun.cache_config`), so a cell trained by a sweep worker is the cell the chapter loads.
Every cell also saves its state after each epoch (:class:`helpers.train.EpochCheckpoint`, next to
its checkpoint), so a run cut off after hours of a full-profile epoch continues where it stopped.

A seed draws the data (colour table, train/validation split, subsets), the initialisation, the
batch order and the perturbation noise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from helpers.book.chapter import ChapterRun
from helpers.cache import cached_run, checkpoint_path
from helpers.data import colored_mnist as cm
from helpers.methods import fisher as fi
from helpers.models import FusionLeNet
from helpers.seed import derive_seed, seed_everything
from helpers.tensordata import TensorData
from helpers.train import EpochCheckpoint, KeepBest, fit, to_device

CHAPTER = "02_fisher_regularization"
NAMES = {
    "regulariser": "Fisher regulariser",
    "baseline": "λ = 0 baseline",
    "paper": "paper-faithful variant",
}
SETTINGS = ("reference", "shortcut")
EVAL_SETS = ("val_colored", "val_gray", "test_colored", "test_gray", "test_conflicting")

_loaded: dict = {}


def configs(params: Mapping[str, Any]) -> dict[str, fi.FisherConfig]:
    """The three regulariser settings: the reference's (the chapter's parameters), λ = 0, and the
    paper-faithful variant (the paper's BCE order, batch-std noise, log-Sobolev estimate). Raises
    :class:`FisherConfigError` naming the parameter at fault."""
    common = dict(n_samples=params["n_samples"], knn_value=params["knn_value"])
    weights = dict(lambda_image=params["lambda_image"], lambda_colour=params["lambda_colour"])
    out = {
        "regulariser": fi.FisherConfig(
            **weights,
            **common,
            noise=params["noise"],
            influence=params["influence"],
            estimation=params["estimation"],
            optim_method=params["optim_method"],
        ),
        "baseline": fi.FisherConfig(lambda_image=0.0, lambda_colour=0.0, **common),
        "paper": fi.FisherConfig(
            **weights,
            **common,
            noise="batch_std",
            influence="paper",
            estimation="ent",
            optim_method=params["optim_method"],
        ),
    }
    for cfg in (out["regulariser"], out["paper"]):
        cfg.check_batch_size(params["batch_size"])
    return out


def reference_seeds(params: Mapping[str, Any]) -> list[int]:
    """The seeds of the reference setting's runs: ``seed``, ``seed + 1``, …"""
    return [params["seed"] + i for i in range(params["n_seeds"])]


def build_data(params: Mapping[str, Any], setting: str, seed: int) -> cm.ColoredMNIST:
    """The data of ``setting`` at ``seed`` (on the CPU)."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    sizes = {k: params[k] for k in ("train_size", "val_size", "test_size")}
    if setting == "reference":
        return cm.build_colored_mnist(seed=seed, std=params["colour_std"], **sizes)
    return cm.build_colored_mnist(
        seed=seed,
        std=params["shortcut_colour_std"],
        palette=params["shortcut_palette"],
        scale=params["shortcut_colour_scale"],
        **sizes,
    )


def load_sets(
    params: Mapping[str, Any], setting: str, seed: int, device
) -> tuple[cm.ColoredMNIST, dict[str, TensorData]]:
    """The data of ``setting`` at ``seed`` and its sets on ``device``; the last one is kept, so
    consecutive cells of one (setting, seed) build it once."""
    names = ("train_size", "val_size", "test_size", "colour_std", "shortcut_colour_std")
    key = (setting, seed, str(device), *(params[k] for k in names))
    key += (params["shortcut_palette"], params["shortcut_colour_scale"])
    if key not in _loaded:
        _loaded.clear()
        data = build_data(params, setting, seed)
        _loaded[key] = (data, {k: to_device(v, device) for k, v in data.sets.items()})
    return _loaded[key]


@dataclass
class CellResult:
    model: FusionLeNet
    history: pd.DataFrame
    selected_epoch: int
    stopped_early: bool
    from_cache: bool


def cell_config(run: ChapterRun, method: str, setting: str, seed: int) -> dict:
    cfg = configs(run.params)[method]
    return run.cache_config(
        run=method, regulariser=cfg.as_dict(), setting=setting, train_seed=seed, data_seed=seed
    )


def train_cell(
    run: ChapterRun, method: str, setting: str, seed: int, progress: bool | None = None
) -> CellResult:
    """Train (or load) ``method`` (``regulariser``, ``baseline`` or ``paper``) on ``setting``'s data
    at ``seed``: Adam, the reference's moving-average stopping rule, and the weights of the epoch
    with the best grey-validation accuracy. After every epoch: accuracy on every evaluation set
    (the test sets only to draw curves and the reference's max-over-epochs number; nothing is chosen
    on them), the reference's logged proportions, and F per modality on fixed validation batches
    (always with the reference's definition, so that runs are compared on one scale)."""
    p, dev = run.params, run.device
    cfgs = configs(p)
    cfg = cfgs[method]
    _, sets = load_sets(p, setting, seed, dev)
    seed_everything(seed)
    model = FusionLeNet().to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=p["lr"])
    schedulers = (
        [torch.optim.lr_scheduler.StepLR(opt, step_size=20, gamma=0.1)] if p["step_lr"] else []
    )
    step = fi.fisher_step(model, opt, cfg)
    keep = KeepBest(model, "val_gray_acc")
    min_batch = max(c.min_batch() for c in cfgs.values())

    def evaluate() -> dict[str, float]:
        row = {f"{k}_acc": cm.accuracy(model, sets[k]) for k in EVAL_SETS}
        row.update(step.last_batch())
        measured = fi.measure_fisher(
            model,
            sets["val_colored"],
            cfgs["regulariser"],
            batch_size=p["batch_size"],
            n_batches=p["probe_batches"],
            seed=derive_seed(seed, "fisher probe"),
        )
        row.update({f"probe_{k}": v for k, v in measured.items()})
        row["colour_weight_norm"] = float(model.colour_weights().norm())
        return row

    config = cell_config(run, method, setting, seed)
    path = checkpoint_path(f"ch02_{method}", config)
    state = {"model": model, "optimizer": opt, "keep": keep}
    state.update({f"scheduler{i}": s for i, s in enumerate(schedulers)})
    resume = EpochCheckpoint(path.with_suffix(".resume.pt"), state)

    def train() -> dict:
        # KeepBest first: fit stops at the first callback that returns True.
        h = fit(
            sets["train"],
            step,
            epochs=p["epochs"],
            batch_size=p["batch_size"],
            modules=model,
            seed=seed,
            evaluate=evaluate,
            schedulers=schedulers,
            callbacks=[keep, fi.MovingAverageStop(p["patience"])],
            min_batch=min_batch,
            desc=f"{NAMES[method]}, {setting}, seed {seed}",
            progress=progress,
            resume=resume,
        )
        return {"history": h.to_state(), "selected_epoch": keep.restore()}

    out = cached_run(f"ch02_{method}", config, {"model": model}, train)
    resume.discard()
    history = pd.DataFrame(out["history"]["rows"]).set_index("epoch")
    return CellResult(
        model, history, out["selected_epoch"], out["history"]["stopped_early"], out["from_cache"]
    )


# ------------------------------------------------------------------------------------ the grid
def reference_cells(params: Mapping[str, Any]) -> list[dict]:
    """The regulariser and λ = 0 at every reference seed, the paper-faithful variant at the first
    one."""
    cells = [
        {"method": m, "setting": "reference", "seed": s}
        for s in reference_seeds(params)
        for m in ("regulariser", "baseline")
    ]
    if params["paper_variant"]:
        cells.append({"method": "paper", "setting": "reference", "seed": params["seed"]})
    return cells


def shortcut_cells(params: Mapping[str, Any]) -> list[dict]:
    """The regulariser and λ = 0 in the teaching case, at every ``shortcut_seeds`` seed."""
    return [
        {"method": m, "setting": "shortcut", "seed": s}
        for s in params["shortcut_seeds"]
        for m in ("regulariser", "baseline")
    ]


def stages(run: ChapterRun) -> list:
    """One stage: every cell is independent."""
    configs(run.params)  # invalid settings fail before any job is submitted
    return [lambda r: reference_cells(r.params) + shortcut_cells(r.params)]


def is_done(run: ChapterRun, cell: Mapping[str, Any]) -> bool:
    return checkpoint_path(f"ch02_{cell['method']}", cell_config(run, **cell)).is_file()


def run_cell(run: ChapterRun, cell: Mapping[str, Any]) -> None:
    """One sweep job: train the cell into the cache (no progress bars: logs go to a file)."""
    train_cell(run, **cell, progress=False)
