"""The search behind chapter 05's ``quick`` profile: Vanilla and ReBias on Biased MNIST with the
CPU-profile options of the networks, scored on the *validation* split only.

Every run builds the data as the chapter does (``biased_mnist(..., val_size=...)``: held-out MNIST
training digits coloured at ρ = 0.1, an unbiased validation set) and trains with the chapter's code
(``rebias.build`` + ``rebias.train``). The test sets are never evaluated here, so nothing this
script chooses is chosen on the test set. Each run appends one JSON line (its settings, per-epoch
validation accuracy, HSIC diagnostics, seconds per epoch, device, torch threads) to ``--out``.

    python benchmarks/rebias_search.py --method rebias --rho 0.997 --lambda 1 --sigma 1 \
        --epochs 6 --out benchmarks/results/rebias_search.jsonl
    python benchmarks/rebias_search.py --dry-run   # one tiny run, nothing written
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from helpers.book.chapter import git_commit
from helpers.data import biased_mnist as bm
from helpers.device import describe, pick_device
from helpers.hardware import cpu_model
from helpers.methods import rebias as R
from helpers.seed import seed_everything
from helpers.train import to_device


class EpochClock:
    """Callback that records the wall time of each epoch (training and validation)."""

    def __init__(self):
        self.start, self.seconds = time.perf_counter(), []

    def on_epoch_end(self, epoch, row, history) -> bool:
        now = time.perf_counter()
        self.seconds.append(round(now - self.start, 2))
        self.start = now
        return False


def sigma_arg(text: str):
    return text if text == "median" else float(text)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=R.METHODS, default="rebias")
    p.add_argument("--rho", type=float, default=0.997)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=float, default=0.5)
    p.add_argument("--f-strides", default="1,2,2,2")
    p.add_argument("--g-input-pool", type=int, default=4)
    p.add_argument("--lambda", dest="lam", type=float, default=1.0, help="λ_f = λ_g")
    p.add_argument("--sigma", type=sigma_arg, default=1.0, help='a number or "median"')
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--train-size", type=int, default=None)
    p.add_argument("--val-size", type=int, default=10000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="append the record to this JSON-lines file")
    p.add_argument("--dry-run", action="store_true", help="1 epoch on 1,000 images, no output")
    a = p.parse_args()
    if a.dry_run:
        a.epochs, a.train_size, a.val_size, a.out = 1, 1000, 500, None
    torch.set_num_threads(a.threads)
    dev = pick_device(a.device)
    sets = bm.biased_mnist(a.rho, seed=a.seed, train_size=a.train_size, val_size=a.val_size)
    sets = {k: to_device(sets[k], dev) for k in ("train", "val")}  # no test set here
    seed_everything(a.seed)
    setup = R.build(
        a.method,
        width=a.width,
        device=dev,
        lr=a.lr,
        weight_decay=a.weight_decay,
        lambda_f=a.lam,
        lambda_g=a.lam,
        sigma=a.sigma,
        f_strides=[int(s) for s in a.f_strides.split(",")],
        g_input_pool=a.g_input_pool,
    )
    clock = EpochClock()
    history = R.train(
        setup,
        sets,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr_step=20,
        seed=a.seed,
        g_pretrain_epochs=5 if a.method == "learned_mixin" else 0,
        callbacks=[clock],
        progress=False,
        eval_splits=("val",),
    ).frame()
    names = ("val_acc", "g_val_acc", "hsic", "val_hsic", "val_hsic_median", "val_f_feat_norm")
    keep = [c for c in names if c in history]
    record = {
        "settings": {k: v for k, v in vars(a).items() if k not in ("out", "dry_run")},
        "train_images": len(sets["train"]),
        "device": describe(dev),
        "cpu_model": cpu_model(),
        "git_commit": git_commit(),
        "seconds_per_epoch": clock.seconds,
        "history": {c: [round(float(v), 5) for v in history[c]] for c in keep},
    }
    print(json.dumps(record))
    if a.out:
        with Path(a.out).open("a") as fh:
            fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
