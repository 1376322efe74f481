"""A toy grid for tests/test_sweep.py, registered there as chapter ``toy``.

It has the shape of chapter 05's grid: a stage of candidates, then a stage that needs the candidate
chosen on the first, where the chosen candidate's cell reappears. Its cells train a 4 → 1 linear
model for a few steps through the real checkpoint cache, so the sweep machinery (executors,
failures, resuming) is tested on it in seconds; chapter 05's own grid is tested once, end to end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from helpers.book.chapter import ChapterRun
from helpers.cache import cached_run, checkpoint_path

NAME = "toy"


def config(run: ChapterRun, cell: Mapping[str, Any]) -> dict:
    # like ChapterRun.cache_config: the grid axes (values, seeds) are not in the key, the cell is
    return {"grid": NAME, "steps": run.params["steps"], **cell, "code": run.code}


def train_cell(run: ChapterRun, value: float, seed: int) -> dict:
    """Fit y = value · Σx with ``steps`` SGD steps; a negative ``value`` is refused (the failing
    cell of the tests)."""
    if value < 0:
        raise ValueError(f"value must be >= 0, got {value}")
    torch.manual_seed(seed)
    model = nn.Linear(4, 1)

    def train():
        x = torch.randn(32, 4, generator=torch.Generator().manual_seed(seed))
        y = value * x.sum(1, keepdim=True)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(run.params["steps"]):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return {"loss": float(loss.detach())}

    return cached_run(NAME, config(run, {"value": value, "seed": seed}), {"model": model}, train)


def selection_cells(params: Mapping[str, Any]) -> list[dict]:
    return [{"value": v, "seed": params["seeds"][0]} for v in params["values"]]


def chosen_value(run: ChapterRun) -> float:
    """The candidate with the lowest final loss (trains the missing ones)."""
    cells = selection_cells(run.params)
    return min(cells, key=lambda c: train_cell(run, **c)["loss"])["value"]


def stages(run: ChapterRun) -> list:
    return [
        lambda r: selection_cells(r.params),
        lambda r: [{"value": chosen_value(r), "seed": s} for s in r.params["seeds"]],
    ]


def is_done(run: ChapterRun, cell: Mapping[str, Any]) -> bool:
    return checkpoint_path(NAME, config(run, cell)).is_file()


def run_cell(run: ChapterRun, cell: Mapping[str, Any]) -> None:
    train_cell(run, **cell)
