"""The book's one training loop: tensors on the device, shuffled index batches, a hook for the step.

Every chapter trains through :func:`fit`. A method supplies a *step function* that receives one
:class:`Batch` and returns the scalars it wants logged; plain supervised training uses
:func:`supervised_step`, multi-network methods (two models, two optimisers, alternating updates)
write their own step and pass all their networks in ``modules``. Everything else (batching,
shuffling, bf16 autocast on CUDA, progress bars, the per-epoch history, evaluation, early stopping,
LR schedules) is shared.
"""

from __future__ import annotations

import contextlib
import copy
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from helpers.cache import atomic_write_bytes, checkpoint_bytes, read_checkpoint, shown_path
from helpers.device import autocast, full_precision, memory_format, prepare_model
from helpers.metrics import accuracy
from helpers.models import eval_mode
from helpers.seed import generator
from helpers.tensordata import TensorData


@dataclass
class Batch:
    """One mini-batch; ``idx`` are the rows of the training set it came from (for per-sample
    state)."""

    x: torch.Tensor
    y: torch.Tensor
    bias: torch.Tensor | None
    extras: dict[str, torch.Tensor]
    idx: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


StepFn = Callable[[Batch], Mapping[str, "float | torch.Tensor"]]
EpochSampler = Callable[[int, torch.Generator], torch.Tensor]


class Callback(Protocol):
    def on_epoch_end(self, epoch: int, row: dict, history: History) -> bool | None:
        """Return True to stop training after this epoch."""


@dataclass
class History:
    """Per-epoch rows of logged scalars; ``frame()`` shows them as a table."""

    rows: list[dict] = field(default_factory=list)
    stopped_early: bool = False

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()

    def column(self, name: str) -> list[float]:
        return [r[name] for r in self.rows if name in r]

    def to_state(self) -> dict:
        """Plain dict (weights_only-loadable) for checkpoints."""
        return {"rows": [dict(r) for r in self.rows], "stopped_early": self.stopped_early}


@dataclass(frozen=True)
class TrainConfig:
    """The settings every small head shares: Adam with ``lr`` and ``weight_decay``, ``epochs`` of
    batches of ``batch_size`` in an order seeded by ``seed``. Checked once, here."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def adam(self, params) -> torch.optim.Adam:
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class TrainResult:
    """What every ``train_*`` function returns: the history, the epoch whose weights the model now
    holds, and method-specific extras (e.g. JTT's error set)."""

    history: History
    best_epoch: int
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- samplers
def shuffled(n: int, gen: torch.Generator) -> torch.Tensor:
    """Default epoch order: a uniform permutation."""
    return torch.randperm(n, generator=gen)


def class_balanced(labels: torch.Tensor) -> EpochSampler:
    """Epoch order drawing each class equally often (with replacement), epoch length =
    len(labels)."""
    labels = labels.cpu()
    weights = 1.0 / torch.bincount(labels).float()[labels]

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.multinomial(weights, n, replacement=True, generator=gen)

    return sample


def weighted(weights: torch.Tensor) -> EpochSampler:
    """Epoch order drawn with replacement in proportion to per-sample ``weights``."""
    weights = weights.detach().float().cpu()

    def sample(n: int, gen: torch.Generator) -> torch.Tensor:
        return torch.multinomial(weights, n, replacement=True, generator=gen)

    return sample


# ------------------------------------------------------------------------------------------- resume
class EpochCheckpoint:
    """Lets a cut-off :func:`fit` continue where it stopped, with an uninterrupted run's result.

    After every epoch that does not end training, ``fit`` writes (atomically) the epoch, the
    history, the batch-order generator, the global random state and ``state_dict()`` of every
    object in ``objects`` (networks, optimisers, schedulers, :class:`KeepBest`, …) to ``path``;
    a later ``fit`` given an ``EpochCheckpoint`` on the same path restores them and trains the
    remaining epochs. Name the path after the run's cache key (as
    :func:`helpers.cache.cached_run`'s checkpoint), so a state is only resumed by the same code,
    parameters and data; delete it with :meth:`discard` once the finished run is saved. A file
    that cannot be read is reported and training starts over.
    """

    def __init__(self, path: str | os.PathLike, objects: Mapping[str, Any]):
        self.path, self.objects = Path(path), dict(objects)

    def save(self, epoch: int, history: History, gen: torch.Generator) -> None:
        state = {
            "epoch": epoch,
            "history": history.to_state(),
            "batch_order": gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "objects": {k: o.state_dict() for k, o in self.objects.items()},
        }
        buf = io.BytesIO()
        torch.save(state, buf)
        # the checkpoint format: checksum header and payload in one atomic rename
        atomic_write_bytes(self.path, checkpoint_bytes(buf.getvalue()))

    def restore(self, history: History, gen: torch.Generator) -> int:
        """Load the saved state into the objects, ``history`` and ``gen``; return the last finished
        epoch (0 when there is nothing to resume). A state that fails to load leaves every object
        as it was, so training starts over exactly as without the file."""
        if not self.path.is_file():
            return 0
        before = {k: copy.deepcopy(o.state_dict()) for k, o in self.objects.items()}
        try:
            state = read_checkpoint(self.path)
            if set(state["objects"]) != set(self.objects):
                raise ValueError(f"it holds {sorted(state['objects'])}")
            for k, o in self.objects.items():
                o.load_state_dict(state["objects"][k])
        except Exception as err:  # noqa: BLE001 - any unreadable state: train from the start
            for k, o in self.objects.items():
                o.load_state_dict(before[k])
            print(f"cannot resume from {shown_path(self.path)} ({err}); training from epoch 1")
            return 0
        history.rows[:] = [dict(r) for r in state["history"]["rows"]]
        gen.set_state(state["batch_order"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        print(f"resuming after epoch {state['epoch']} from {shown_path(self.path)}")
        return int(state["epoch"])

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- loop
def progress_enabled() -> bool:
    """Progress bars are on unless ``TQDM_DISABLE`` is set (the book runner sets it: a static page
    cannot render widget progress bars, and the per-epoch history tables carry the same
    information)."""
    return os.environ.get("TQDM_DISABLE", "").lower() not in ("1", "true", "yes")


def fit(
    train: TensorData,
    step: StepFn,
    *,
    epochs: int,
    batch_size: int,
    modules: nn.Module | Sequence[nn.Module],
    seed: int,
    evaluate: Callable[[], Mapping[str, float]] | None = None,
    schedulers: Iterable = (),
    callbacks: Iterable[Callback] = (),
    sampler: EpochSampler = shuffled,
    drop_last: bool = False,
    min_batch: int = 1,
    progress: bool | None = None,
    desc: str = "train",
    resume: EpochCheckpoint | None = None,
) -> History:
    """Train for ``epochs`` epochs over ``train`` (already on the training device).

    Each epoch draws an index order from ``sampler`` with a generator seeded from ``seed`` (so batch
    order is reproducible and independent of other random draws), cuts it into batches of
    ``batch_size`` and calls ``step`` on each inside :func:`helpers.device.autocast` (bf16 on CUDA
    GPUs that support it; models in channels_last on CUDA). A final batch smaller than ``min_batch``
    is dropped (some estimators, e.g. unbiased HSIC, are undefined on tiny batches); ``drop_last``
    drops any incomplete one. Scalars returned by ``step`` are averaged over the epoch (weighted by
    batch size); ``evaluate()`` runs after each epoch with the modules in eval mode; ``schedulers``
    step once per epoch; a callback returning True stops training. ``progress=None`` follows
    :func:`progress_enabled`. ``resume`` (an :class:`EpochCheckpoint`) saves the state after every
    epoch and continues a cut-off run from it.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if progress is None:
        progress = progress_enabled()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(train) == 0:
        raise ValueError("the training set is empty")
    modules = [modules] if isinstance(modules, nn.Module) else list(modules)
    schedulers, callbacks = list(schedulers), list(callbacks)
    device = train.device
    # each network in its layout on this device (channels_last on CUDA; see memory_format)
    for m in modules:
        prepare_model(m, device)
    gen = generator(seed, "batch order")  # its own stream: not the one that initialised the model
    history = History()
    n = len(train)
    full_batches = n // batch_size
    last = n - full_batches * batch_size
    keep_last = last > 0 and not drop_last and last >= min_batch
    n_batches = full_batches + int(keep_last)
    if n_batches == 0:
        raise ValueError(
            f"no batch left: {n} samples, batch_size={batch_size}, min_batch={min_batch}, "
            f"drop_last={drop_last}"
        )

    done = resume.restore(history, gen) if resume is not None else 0
    bar = tqdm(
        range(done + 1, epochs + 1),
        desc=desc,
        unit="epoch",
        initial=done,
        total=epochs,
        disable=not progress,
    )
    for epoch in bar:
        t0 = time.perf_counter()
        for m in modules:
            m.train()
        order = sampler(n, gen).to(device)
        sums: dict[str, torch.Tensor] = {}
        seen = 0
        for b in tqdm(range(n_batches), desc=f"epoch {epoch}", leave=False, disable=not progress):
            idx = order[b * batch_size : (b + 1) * batch_size]
            batch = Batch(
                train.x[idx],
                train.y[idx],
                None if train.bias is None else train.bias[idx],
                {k: v[idx] for k, v in train.extras.items()},
                idx,
            )
            with autocast(device):
                logged = step(batch)
            k = len(idx)
            seen += k
            for name, value in logged.items():
                value = (
                    value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
                )
                sums[name] = sums.get(name, 0.0) + value * k  # stays on device: no sync per step
        row = {"epoch": epoch, **{name: float(s) / seen for name, s in sums.items()}}
        for sched in schedulers:
            sched.step()
        if evaluate is not None:
            for m in modules:
                m.eval()
            with torch.no_grad():
                row.update({k: float(v) for k, v in evaluate().items()})
        row["time_s"] = time.perf_counter() - t0
        history.rows.append(row)
        bar.set_postfix(
            {k: f"{v:.3f}" for k, v in row.items() if k not in ("epoch", "time_s")}, refresh=False
        )
        if any(cb.on_epoch_end(epoch, row, history) for cb in callbacks):
            history.stopped_early = epoch < epochs
            break
        if resume is not None and epoch < epochs:
            resume.save(epoch, history, gen)
    for m in modules:
        m.eval()
    return history


# ----------------------------------------------------------------------------------- standard steps
def supervised_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
) -> StepFn:
    """Plain ERM: one forward, ``loss_fn(logits, y)``, one optimiser step. Logs loss and
    accuracy."""

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        logits = model(batch.x)
        loss = loss_fn(logits, batch.y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss, "acc": (logits.argmax(1) == batch.y).float().mean()}

    return step


@torch.no_grad()
def predict(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    data: TensorData | torch.Tensor,
    batch_size: int = 1024,
    mixed_precision: bool = False,
) -> torch.Tensor:
    """Float32 logits of ``model`` on all of ``data`` in eval mode (the model's previous mode is
    restored).

    Accuracies, dev losses, early stopping and model selection all read these logits, so they are
    computed with autocast off (also inside a step); ``mixed_precision=True`` uses the training
    autocast instead.
    """
    x = data.x if isinstance(data, TensorData) else data
    with eval_mode(model) if isinstance(model, nn.Module) else contextlib.nullcontext():
        outs = []
        for start in range(0, len(x), batch_size):
            with autocast(x.device) if mixed_precision else full_precision(x.device):
                outs.append(model(x[start : start + batch_size]).float())
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy_on(model: nn.Module, data: TensorData, batch_size: int = 1024) -> float:
    """Fraction of ``data`` that ``model`` classifies correctly."""
    return accuracy(data.y, predict(model, data, batch_size).argmax(1))


# ---------------------------------------------------------------------------------------- callbacks
class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` epochs (``mode`` 'max' or 'min')."""

    def __init__(self, monitor: str, patience: int, mode: str = "max", min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.monitor, self.patience, self.mode, self.min_delta = monitor, patience, mode, min_delta
        self.best = -math.inf if mode == "max" else math.inf
        self.bad_epochs = 0

    def on_epoch_end(self, epoch: int, row: dict, history: History) -> bool:
        value = row[self.monitor]
        improved = (
            value > self.best + self.min_delta
            if self.mode == "max"
            else value < self.best - self.min_delta
        )
        if improved:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]


class KeepBest:
    """Remember the modules' weights at the epoch with the best ``monitor`` value; ``restore()``
    loads them."""

    def __init__(self, modules: nn.Module | Sequence[nn.Module], monitor: str, mode: str = "max"):
        self.modules = [modules] if isinstance(modules, nn.Module) else list(modules)
        self.monitor, self.mode = monitor, mode
        self.best, self.best_epoch, self.states = None, None, None

    def on_epoch_end(self, epoch: int, row: dict, history: History) -> None:
        value = row[self.monitor]
        if self.best is None or (value > self.best if self.mode == "max" else value < self.best):
            self.best, self.best_epoch = value, epoch
            self.states = [
                {k: v.detach().clone() for k, v in m.state_dict().items()} for m in self.modules
            ]

    def state_dict(self) -> dict:
        """What :class:`EpochCheckpoint` saves: the best value, its epoch and weights."""
        return {"best": self.best, "best_epoch": self.best_epoch, "states": self.states}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best, self.best_epoch, self.states = (
            state["best"],
            state["best_epoch"],
            state["states"],
        )

    def restore(self) -> int:
        """Load the best weights back; return the selected epoch."""
        if self.states is None:
            raise RuntimeError("KeepBest.restore() called before any epoch ended")
        for m, s in zip(self.modules, self.states):
            m.load_state_dict(s)
        return self.best_epoch


def fit_keep_best(
    model: nn.Module,
    train: TensorData,
    step: StepFn,
    cfg: TrainConfig,
    metric: str,
    score: Callable[[], float],
    *,
    seed: int | None = None,
    sampler: EpochSampler = shuffled,
    desc: str = "train",
) -> TrainResult:
    """Train ``model`` with ``step`` as ``cfg`` says (epochs, batch size, seed; ``seed`` overrides)
    and end with the weights of the epoch whose ``score()`` (logged as ``metric``) was highest: the
    model selection of every head-training function."""
    keep = KeepBest(model, metric)
    history = fit(
        train,
        step,
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        modules=model,
        seed=cfg.seed if seed is None else seed,
        desc=desc,
        sampler=sampler,
        evaluate=lambda: {metric: score()},
        callbacks=[keep],
    )
    return TrainResult(history, keep.restore())


def to_device(data: TensorData, device) -> TensorData:
    """Move a dataset to ``device`` in the device's preferred image layout (channels_last on
    CUDA)."""
    return data.to(device, memory_format(device))
