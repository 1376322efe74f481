"""Chapter 05's training grid as plain function calls: one cell = one method at one ρ and seed.

The chapter and ``python -m helpers.book sweep`` call the same :func:`train_cell`, which trains
through the checksummed, content-keyed checkpoint cache (:func:`helpers.cache.cached_run`, key
:meth:`ChapterRun.cache_config`), so a cell trained by a sweep worker is the cell the chapter
loads.

The grid has two stages: ReBias at every candidate λ at ``select_rho`` on the *selection seeds*
(:func:`selection_seeds`, ``n_select_seeds`` of them, disjoint from the seeds of the reported runs),
then every method at every ρ and reported seed with the λ whose validation accuracy, averaged over
the selection seeds, is best (:func:`chosen_lambda`). So λ is chosen on ≥ 2 seeds and no reported
run is a run that chose it. With a single candidate λ there is nothing to choose: no stage-1 cells.

RUBi and LearnedMixin+H follow ``train_extra_layers`` (``False`` = the reference code behind the
paper's Table 1, which never trains RUBi's head or LearnedMixin's gate); ``rubi_fix`` and
``learned_mixin_fix`` are the same methods with those layers trained: the book's fix, a named
variant.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch.nn.functional as F
from torch import nn

from helpers.book.chapter import ChapterRun
from helpers.cache import cached_run, checkpoint_path
from helpers.data import biased_mnist as bm
from helpers.methods import rebias as R
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import accuracy_on, to_device

CHAPTER = "05_rebias"
NAMES = {
    "vanilla": "Vanilla",
    "biased": "Biased",
    "rebias": "ReBias",
    "rubi": "RUBi",
    "learned_mixin": "LearnedMixin+H",
    "rubi_fix": "RUBi (fix: head trained)",
    "learned_mixin_fix": "LearnedMixin+H (fix: gate trained)",
}
BASELINES = ("rubi", "learned_mixin", "rubi_fix", "learned_mixin_fix")
FIX_SUFFIX = "_fix"  # the book's fix of a baseline: its extra layer is trained
SELECT_OFFSET = 1000  # selection seeds start here above ``seed`` (n_seeds <= 10: never overlap)

_loaded: dict = {}


def load_sets(params: Mapping[str, Any], rho: float, seed: int, device) -> dict[str, TensorData]:
    """The training, validation and test sets at (ρ, seed) on ``device``; the last one is kept, so
    consecutive cells of one (ρ, seed) build the data once."""
    key = (rho, seed, str(device), *(params[k] for k in ("train_size", "val_size", "test_size")))
    key += (params["image_size"],)
    if key not in _loaded:
        _loaded.clear()
        sets = bm.biased_mnist(
            rho,
            seed=seed,
            train_size=params["train_size"],
            test_size=params["test_size"],
            val_size=params["val_size"],
        )
        if params["image_size"] == 14:
            sets = {k: TensorData(F.avg_pool2d(v.x, 2), v.y, v.bias) for k, v in sets.items()}
        _loaded[key] = {k: to_device(v, device) for k, v in sets.items()}
    return _loaded[key]


def eval_splits(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The split scored after every epoch: the validation set, or (no validation split, the
    paper's setting) the unbiased test set, on which nothing is then chosen."""
    return ("val",) if params["val_size"] is not None else ("unbiased",)


def seeds(params: Mapping[str, Any], baseline: bool = False) -> list[int]:
    """The seeds of the reported runs: ``seed``, ``seed + 1``, ..."""
    n = params["baseline_seeds"] if baseline else params["n_seeds"]
    return [params["seed"] + i for i in range(n)]


def selection_seeds(params: Mapping[str, Any]) -> list[int]:
    """The seeds of the λ-selection runs, ``seed + 1000``, ``seed + 1001``, ... (modulo 2**32):
    their own seeds, so that the runs that choose λ are not the runs that are reported."""
    return [(params["seed"] + SELECT_OFFSET + i) % 2**32 for i in range(params["n_select_seeds"])]


def base_method(method: str) -> str:
    """The :func:`rebias.build` method of a grid method (``rubi_fix`` → ``rubi``)."""
    return method.removesuffix(FIX_SUFFIX)


def extra_layers_trained(params: Mapping[str, Any], method: str) -> bool:
    """Whether RUBi's head / LearnedMixin's gate train: always for the fix variants, else as
    ``train_extra_layers`` says (the paper's reference code: False)."""
    return method.endswith(FIX_SUFFIX) or bool(params["train_extra_layers"])


def check_grid(params: Mapping[str, Any]) -> None:
    """The cross-parameter rules the schema cannot state; errors name the parameter."""
    for name in ("baseline_rhos", "select_rho"):
        values = params[name] if isinstance(params[name], list) else [params[name]]
        if any(r not in params["rhos"] for r in values):
            raise ValueError(f"{name} = {params[name]} must be among rhos = {params['rhos']}")
    if params["val_size"] is None and len(params["lambdas"]) > 1:
        raise ValueError(
            "lambdas has several candidates but val_size is None: choosing λ needs a validation set"
        )
    reported = set(seeds(params)) | set(seeds(params, baseline=True))
    if len(params["lambdas"]) > 1 and reported & set(selection_seeds(params)):
        raise ValueError(
            f"the selection seeds {selection_seeds(params)} overlap the reported seeds "
            f"{sorted(reported)}: choose another seed"
        )


@dataclass
class CellResult:
    modules: dict[str, nn.Module]
    history: pd.DataFrame
    test: dict[str, float]  # biased_acc, unbiased_acc of f; g_biased_acc, g_unbiased_acc of g
    from_cache: bool


def cell_config(run: ChapterRun, method: str, rho: float, seed: int, lam: float | None) -> dict:
    """The cache key; a fix variant keys its own ``train_extra_layers = True`` (the parameter only
    sets the paper-named baselines)."""
    fix = {"train_extra_layers": True} if method.endswith(FIX_SUFFIX) else {}
    return run.cache_config(method=method, rho=rho, seed=seed, lam=lam, **fix)


def train_cell(
    run: ChapterRun, method: str, rho: float, seed: int, lam: float | None = None, progress=None
) -> CellResult:
    """Train (or load) ``method`` at ``rho`` and ``seed`` (ReBias with λ_f = λ_g = ``lam``) and
    score f and g once on the test sets."""
    p, dev = run.params, run.device
    sets = load_sets(p, rho, seed, dev)
    seed_everything(seed)
    weights = {"lambda_f": lam, "lambda_g": lam} if method == "rebias" else {}
    setup = R.build(
        base_method(method),
        width=p["width"],
        device=dev,
        lr=p["lr"],
        weight_decay=p["weight_decay"],
        sigma=p["rbf_sigma"],
        train_extra_layers=extra_layers_trained(p, method),
        entropy_weight=p["entropy_weight"],
        f_strides=p["f_strides"],
        g_input_pool=p["g_input_pool"],
        **weights,
    )
    desc = f"{NAMES[method]} ρ={rho} seed={seed}" + (f" λ={lam:g}" if lam is not None else "")
    out = cached_run(
        f"ch05_{method}",
        cell_config(run, method, rho, seed, lam),
        setup.modules,
        lambda: {
            "history": R.train(
                setup,
                sets,
                epochs=p["epochs"],
                batch_size=p["batch_size"],
                lr_step=p["lr_step"],
                seed=seed,
                g_pretrain_epochs=p["g_pretrain_epochs"],
                eval_splits=eval_splits(p),
                desc=desc,
                progress=progress,
            ).to_state()
        },
    )
    test = {
        f"{who}{split}_acc": accuracy_on(setup.modules[net], sets[split])
        for net, who in (("f", ""), ("g", "g_"))
        for split in ("biased", "unbiased")
    }
    history = pd.DataFrame(out["history"]["rows"]).set_index("epoch")
    return CellResult(setup.modules, history, test, out["from_cache"])


# ------------------------------------------------------------------------------------ the grid
def selection_cells(params: Mapping[str, Any]) -> list[dict]:
    """Stage 1: ReBias at every candidate λ at ``select_rho`` on every selection seed (none when
    there is a single candidate: nothing to choose)."""
    if "rebias" not in params["methods"] or len(params["lambdas"]) < 2:
        return []
    return [
        {"method": "rebias", "rho": params["select_rho"], "seed": s, "lam": lam}
        for lam in params["lambdas"]
        for s in selection_seeds(params)
    ]


def selection_table(run: ChapterRun, progress=None) -> pd.DataFrame:
    """Validation accuracy (last epoch) of every stage-1 cell, one row per λ and one column per
    selection seed (trains the missing cells); empty with a single candidate."""
    split = eval_splits(run.params)[0]
    scores: dict[float, dict[int, float]] = {}
    for cell in selection_cells(run.params):
        hist = train_cell(run, **cell, progress=progress).history
        scores.setdefault(cell["lam"], {})[cell["seed"]] = float(hist[f"{split}_acc"].iloc[-1])
    return pd.DataFrame(scores).T


def selection_scores(run: ChapterRun) -> dict[float, float]:
    """Mean validation accuracy over the selection seeds of each candidate λ."""
    table = selection_table(run)
    return {} if table.empty else table.mean(axis=1).to_dict()


def chosen_lambda(scores: Mapping[float, float], lambdas=None) -> float | None:
    """The candidate with the best mean validation accuracy (the first one on a tie); without
    scores (a single candidate) the first of ``lambdas``."""
    if scores:
        return max(scores, key=scores.get)
    return lambdas[0] if lambdas else None


def grid_cells(params: Mapping[str, Any], lam: float | None) -> list[dict]:
    """Stage 2: Vanilla and ReBias at every ρ and seed, the baselines at ``baseline_rhos``."""
    cells = [
        {"method": m, "rho": rho, "seed": s, "lam": lam if m == "rebias" else None}
        for rho in params["rhos"]
        for s in seeds(params)
        for m in ("vanilla", "rebias")
        if m in params["methods"]
    ]
    cells += [
        {"method": m, "rho": rho, "seed": s, "lam": None}
        for rho in params["baseline_rhos"]
        for s in seeds(params, baseline=True)
        for m in BASELINES
        if m in params["methods"]
    ]
    return cells


def stages(run: ChapterRun) -> list:
    """The grid as stages for a sweep: each entry maps the run to its cells, given that every
    earlier stage has finished (stage 2 needs the λ chosen on stage 1)."""
    check_grid(run.params)
    return [
        lambda r: selection_cells(r.params),
        lambda r: grid_cells(r.params, chosen_lambda(selection_scores(r), r.params["lambdas"])),
    ]


def is_done(run: ChapterRun, cell: Mapping[str, Any]) -> bool:
    return checkpoint_path(f"ch05_{cell['method']}", cell_config(run, **cell)).is_file()


def run_cell(run: ChapterRun, cell: Mapping[str, Any]) -> None:
    """One sweep job: train the cell into the cache (no progress bars: logs go to a file)."""
    train_cell(run, **cell, progress=False)
