"""Time of chapter 02's regulariser training step against the reference code's, on one batch.

Both sides train the same network (the book's ``FusionLeNet`` and the reference's ``ModifiedLeNet``,
started from the same weights) on the same 128 Colored-MNIST pairs at the reference settings
(n_samples 10, knn_value 219, λ_image 1e-12, λ_colour 7e-11, estimation var, max_ent, Adam lr
1e-2): forward, k-NN perturbation of both modalities, influence loss, the two Fisher terms by
double backward, backward, Adam step. The steps alternate A/B in one process (the order flips
every pair) after a warm-up, and the medians over ``--repeats`` pairs are compared.

    python benchmarks/fisher_step.py --reference /tmp/Bias-Mitigation [--repeats 15] \
        [--threads 2] [--epoch [--max-batches N]] [--json benchmarks/results/fisher_step.json]

* **The book's step** is ``helpers.methods.fisher.fisher_step`` called by ``helpers.train.fit``
  (one one-batch epoch per timed step, batch order fixed), so it runs with whatever layout and
  precision the loop gives it; the timer wraps the step call only.
* **The reference's step** is the body of the batch loop of ``measure_generalization`` in the
  reference's ``utils/measure.py``, from ``optimizer.zero_grad()`` to ``optimizer.step()``. It is
  read from the checkout given by ``--reference`` and compiled at run time into a function of
  (model, optimizer, images, color_vectors, labels, reg_params), evaluated in that module's own
  namespace, so it calls the reference's ``Perturbation``, ``Regularization`` and
  ``RegParameters`` exactly as its training loop does; no reference code is kept in this
  repository. The reference is zelsayed/Bias-Mitigation (``git clone`` it, or the mirror of it, to
  the path). Nothing of it is patched: ``measure_generalization`` calls ``.cuda()`` only outside
  the loop body, on the batch and model, and those lines are not used (the batch and model are put
  on ``--device`` here instead); ``main.py``, which needs CUDA and downloads MNIST, is not
  imported. The loop's bookkeeping after the step (``loss.item()``, accuracy counts) is not timed;
  the book's step returns its logged scalars as tensors.
* **Same loss:** before the first step both sides are seeded alike; the reference draws the noise
  in the same order and shapes as the book's code, so the two first-step losses (cross-entropy +
  λ-weighted inverse Fisher terms) are printed and should agree to float precision.
* ``--epoch`` also times one epoch of the full profile (48,000 training pairs, batch 128, 375
  batches) through ``helpers.train.fit`` with the book's step, training only (no evaluation);
  ``--max-batches N`` trains the first N batches and extrapolates to 375 (stated as such in the
  output and the JSON).

The JSON records the ratio (reference median / book median: above 1, the book's step is faster),
both medians, the CPU model, device, torch version, thread count, the machine's load average (on a
shared machine the medians move with it; the A/B alternation keeps the ratio fairer), this
repository's commit and the reference's commit.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from helpers.book.chapter import git_commit
from helpers.data import colored_mnist as cm
from helpers.device import describe, pick_device
from helpers.hardware import cpu_model
from helpers.methods.fisher import FisherConfig, fisher_step
from helpers.models import FusionLeNet
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import fit, to_device

REFERENCE_FILES = ("regularization.py", "utils/models.py", "utils/measure.py")
OUT = Path(__file__).parent / "results" / "fisher_step.json"


# ------------------------------------------------------------------------------ the reference
def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_reference(root: Path):
    """The reference's modules, loaded from their files (``utils/`` has no ``__init__.py``, and
    ``measure.py`` imports ``regularization`` as a top-level module)."""
    missing = [f for f in REFERENCE_FILES if not (root / f).is_file()]
    if missing:
        raise SystemExit(f"--reference {root}: not a Bias-Mitigation checkout (missing {missing})")
    reg = _load("regularization", root / "regularization.py")
    models = _load("bias_mitigation_models", root / "utils/models.py")
    measure = _load("bias_mitigation_measure", root / "utils/measure.py")
    return reg, models, measure


def reference_step_fn(measure):
    """The reference's training step: the statements of ``measure_generalization``'s batch loop from
    ``optimizer.zero_grad()`` to ``optimizer.step()``, compiled from its file into a function that
    returns ``loss``."""
    path = Path(measure.__file__)
    tree = ast.parse(path.read_text(), filename=str(path))
    fn = next(
        n
        for n in tree.body
        if isinstance(n, ast.FunctionDef) and n.name == "measure_generalization"
    )
    loop = next(
        n
        for n in ast.walk(fn)
        if isinstance(n, ast.For) and isinstance(n.iter, ast.Name) and n.iter.id == "train_loader"
    )
    calls = [ast.unparse(s) for s in loop.body]
    first, last = calls.index("optimizer.zero_grad()"), calls.index("optimizer.step()")
    body = loop.body[first : last + 1] + [ast.Return(ast.Name("loss", ast.Load()))]
    args = ["model", "optimizer", "images", "color_vectors", "labels", "reg_params"]
    step = ast.FunctionDef(
        name="reference_step",
        args=ast.arguments(
            posonlyargs=[],
            args=[ast.arg(a) for a in args],
            kwonlyargs=[],
            kw_defaults=[],
            defaults=[],
        ),
        body=body,
        decorator_list=[],
        type_params=[],
    )
    module = ast.fix_missing_locations(ast.Module(body=[step], type_ignores=[]))
    namespace = dict(vars(measure))
    exec(compile(module, str(path), "exec"), namespace)  # noqa: S102 - the reference's own lines
    lines = (loop.body[first].lineno, loop.body[last].end_lineno)
    return namespace["reference_step"], lines


def reference_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return None
    return out.stdout.strip() or None


# ------------------------------------------------------------------------------ timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class BookSide:
    """The book's step inside ``fit``: each call trains one epoch of the one batch and returns the
    step's own wall time (ms) and logged loss."""

    def __init__(self, model, cfg: FisherConfig, batch: TensorData, lr: float):
        self.model, self.batch = model, batch
        self.step = fisher_step(model, torch.optim.Adam(model.parameters(), lr=lr), cfg)
        self.device = batch.device

    def __call__(self) -> tuple[float, float]:
        out = {}

        def timed(b):
            sync(self.device)
            t0 = time.perf_counter()
            logged = self.step(b)
            sync(self.device)
            out["ms"] = 1000 * (time.perf_counter() - t0)
            out["loss"] = logged["loss"]
            return logged

        fit(
            self.batch,
            timed,
            epochs=1,
            batch_size=len(self.batch),
            modules=self.model,
            seed=0,
            sampler=lambda n, gen: torch.arange(n),  # the batch in its own order
            progress=False,
        )
        return out["ms"], float(out["loss"])


class ReferenceSide:
    def __init__(self, step, model, reg_params, batch: TensorData, lr: float):
        self.fn, self.model, self.reg_params = step, model, reg_params
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.images = batch.x.contiguous()
        self.colours, self.labels = batch.extras["colour"], batch.y
        self.device = batch.device

    def __call__(self) -> tuple[float, float]:
        self.model.train()
        sync(self.device)
        t0 = time.perf_counter()
        loss = self.fn(
            self.model, self.optimizer, self.images, self.colours, self.labels, self.reg_params
        )
        sync(self.device)
        return 1000 * (time.perf_counter() - t0), float(loss.detach())


def copy_weights(book: torch.nn.Module, ref: torch.nn.Module) -> None:
    """FusionLeNet and ModifiedLeNet list the same parameters in the same order under other
    names: give the reference the book's initial weights."""
    src, dst = list(book.parameters()), list(ref.parameters())
    if [p.shape for p in src] != [p.shape for p in dst]:
        raise SystemExit("FusionLeNet and the reference's ModifiedLeNet differ in shape")
    with torch.no_grad():
        for s, d in zip(src, dst, strict=True):
            d.copy_(s)


def summary(ms: list[float]) -> dict:
    q = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {"median": statistics.median(ms), "q1": q[0], "q3": q[2], "min": min(ms)}


def time_epoch(cfg: FisherConfig, device, lr: float, seed: int, max_batches: int | None) -> dict:
    """One full-profile epoch (the 48k training pairs, batch 128) through ``fit``; with
    ``max_batches``, the first that many batches, extrapolated to the epoch."""
    batch_size = 128
    train = to_device(cm.build_colored_mnist(seed=seed)["train"], device)
    total = len(train) // batch_size + int(len(train) % batch_size >= cfg.min_batch())
    n = total if max_batches is None else min(max_batches, total)
    data = train if n == total else train[: n * batch_size]
    seed_everything(seed)
    model = FusionLeNet().to(device)
    step = fisher_step(model, torch.optim.Adam(model.parameters(), lr=lr), cfg)
    sync(device)
    t0 = time.perf_counter()
    fit(
        data,
        step,
        epochs=1,
        batch_size=batch_size,
        modules=model,
        seed=seed,
        min_batch=cfg.min_batch(),
        progress=False,
    )
    sync(device)
    seconds = time.perf_counter() - t0
    return {
        "train_pairs": len(train),
        "batch_size": batch_size,
        "batches_in_epoch": total,
        "batches_timed": n,
        "seconds_timed": seconds,
        "epoch_seconds": seconds * total / n,
        "extrapolated": n < total,
    }


# ------------------------------------------------------------------------------ main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", required=True, type=Path, help="a Bias-Mitigation checkout")
    p.add_argument("--repeats", type=int, default=15, help="timed A/B pairs (>= 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each side first")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", action="store_true", help="also time one full-profile epoch")
    p.add_argument("--max-batches", type=int, default=None, help="--epoch: time N batches only")
    p.add_argument("--json", type=Path, default=OUT)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        p.error("--repeats must be >= 1 and --warmup >= 0")
    if args.max_batches is not None and args.max_batches < 1:
        p.error("--max-batches must be >= 1")
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    device = pick_device(args.device)
    root = args.reference.resolve()
    reg, ref_models, measure = load_reference(root)
    ref_step, lines = reference_step_fn(measure)

    cfg = FisherConfig()  # the reference's command-line defaults
    expected = dict(n_samples=10, knn_value=219, lambda_image=1e-12, lambda_colour=7e-11)
    assert all(getattr(cfg, k) == v for k, v in expected.items()), cfg
    lr, batch_size = 1e-2, 128
    reg_params = reg.RegParameters(
        lambda_image=cfg.lambda_image,
        lambda_color=cfg.lambda_colour,
        norm=2.0,
        estimation=cfg.estimation,
        optim_method=cfg.optim_method,
        n_samples=cfg.n_samples,
        knn_value=cfg.knn_value,
    )
    data = cm.build_colored_mnist(seed=args.seed, train_size=batch_size, val_size=10, test_size=10)
    batch = to_device(data["train"], device)

    seed_everything(args.seed)
    book_model = FusionLeNet().to(device)
    ref_model = ref_models.ModifiedLeNet(1, 10).to(device)
    copy_weights(book_model, ref_model)
    with torch.no_grad():
        ce = float(F.cross_entropy(book_model(batch.x, batch.extras["colour"]), batch.y))
    sides = {
        "book": BookSide(book_model, cfg, batch, lr),
        "reference": ReferenceSide(ref_step, ref_model, reg_params, batch, lr),
    }

    # first step of each side from the same weights and the same random state
    first = {}
    for name, side in sides.items():
        torch.manual_seed(args.seed)
        first[name] = side()[1]
    print(
        f"first step, same batch and weights: cross-entropy {ce:.6f}; total loss book "
        f"{first['book']:.6f}, reference {first['reference']:.6f} (regulariser "
        f"{first['book'] - ce:.6g} vs {first['reference'] - ce:.6g})"
    )
    for _ in range(max(args.warmup - 1, 0)):
        for side in sides.values():
            side()

    ms = {name: [] for name in sides}
    order = list(sides)
    for i in range(args.repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            ms[name].append(sides[name]()[0])
        print(
            f"pair {i + 1}/{args.repeats}: book {ms['book'][-1]:.1f} ms, "
            f"reference {ms['reference'][-1]:.1f} ms",
            flush=True,
        )
    book, ref = summary(ms["book"]), summary(ms["reference"])
    pair_ratios = [r / b for r, b in zip(ms["reference"], ms["book"], strict=True)]
    result = {
        "benchmark": "benchmarks/fisher_step.py",
        "command": " ".join(
            [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
        ),
        "ratio": ref["median"] / book["median"],
        "ratio_means": "reference median / book median (> 1: the book's step is faster)",
        "median_of_pair_ratios": statistics.median(pair_ratios),
        "book_step_ms": book,
        "reference_step_ms": ref,
        "pairs": args.repeats,
        "warmup_steps": args.warmup,
        "batch_size": batch_size,
        "lr": lr,
        "regulariser": cfg.as_dict(),
        "first_step": {
            "cross_entropy": ce,
            "book_loss": first["book"],
            "reference_loss": first["reference"],
        },
        "device": describe(device),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1_5_15_min": {"before": load_before, "after_steps": os.getloadavg()},
        "git_commit": git_commit(),
        "reference": {
            "repository": "zelsayed/Bias-Mitigation",
            "commit": reference_commit(root),
            "step": f"utils/measure.py lines {lines[0]}-{lines[1]}",
            "sha256": {
                f: hashlib.sha256((root / f).read_bytes()).hexdigest()[:16] for f in REFERENCE_FILES
            },
        },
    }
    print(
        f"{describe(device)}, {cpu_model()}, torch {torch.__version__}: {args.repeats} A/B pairs "
        f"after {args.warmup} warm-up steps each\n"
        f"  book step      median {book['median']:8.1f} ms "
        f"(IQR {book['q1']:.1f}–{book['q3']:.1f})\n"
        f"  reference step median {ref['median']:8.1f} ms "
        f"(IQR {ref['q1']:.1f}–{ref['q3']:.1f})\n"
        f"  reference / book = {result['ratio']:.2f} (median of per-pair ratios "
        f"{result['median_of_pair_ratios']:.2f})"
    )
    if args.epoch:
        epoch = time_epoch(cfg, device, lr, args.seed, args.max_batches)
        result["epoch"] = epoch
        how = (
            f"{epoch['batches_timed']} of {epoch['batches_in_epoch']} batches took "
            f"{epoch['seconds_timed']:.1f} s, extrapolated"
            if epoch["extrapolated"]
            else "measured"
        )
        print(f"  one full-profile epoch through fit: {epoch['epoch_seconds']:.0f} s ({how})")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.json}")
    return result


if __name__ == "__main__":
    main()
