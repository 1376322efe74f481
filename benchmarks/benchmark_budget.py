"""Chapter 08's epoch budget and image size, chosen on validation only.

The protocol gives every method one epoch budget. It should be large enough that the ERM baseline is
trained to its plateau on the data it sees — a budget cut short would make every de-biasing method
look better against an under-trained baseline. This script trains ERM exactly as chapter 08 does
(the benchmark's LeNet, Adam, its batch size and first weight decay, the full profile's data sizes)
for up to ``--max-epochs`` epochs and records, after every epoch, the accuracy and worst-class
accuracy on the **biased validation set** (no bias labels) and the training loss. No test image is
evaluated. Chapter 08 reads the file and applies its rule (the smallest budget whose
biased-validation accuracy is within a few validation images of the best epoch's).

    python benchmarks/benchmark_budget.py --rhos 0.99 0.999 --seeds 0 1 --image-sizes 14 28
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from helpers.book.chapter import git_commit
from helpers.book.sweep import chapter_run
from helpers.hardware import cpu_model
from helpers.methods import benchmark_grid as bg
from helpers.methods import debias as D
from helpers.seed import seed_everything
from helpers.selection import evaluate_validation
from helpers.train import fit

OUT = Path(__file__).parent / "results" / "benchmark_budget.jsonl"


def train_erm(params: dict, rho: float, seed: int, max_epochs: int):
    """One ERM cell of chapter 08 (its data, network, step, optimiser and seeding) trained for
    ``max_epochs``, with its biased-validation metrics after every epoch: (network, history)."""
    dev = torch.device("cpu")
    sets = bg.load_sets(params, rho, seed, dev)
    seed_everything(seed)
    setup = D.build(
        "erm",
        lambda: bg.backbone(params),
        sets["train"],
        lr=params["lr"],
        weight_decay=params["weight_decays"][0],
        num_classes=bg.NUM_CLASSES,
        num_biases=bg.NUM_BIASES,
    )
    model = setup.modules["model"]
    history = fit(
        sets["train"],
        setup.step,
        epochs=max_epochs,
        batch_size=params["batch_size"],
        modules=list(setup.modules.values()),
        seed=seed,
        sampler=setup.sampler,
        min_batch=4,
        evaluate=lambda: evaluate_validation(model, sets["val_biased"], num_classes=bg.NUM_CLASSES),
        progress=False,
    )
    return model, history


def erm_curve(params: dict, rho: float, seed: int, max_epochs: int) -> dict:
    """:func:`train_erm`'s per-epoch record."""
    sets = bg.load_sets(params, rho, seed, torch.device("cpu"))
    _, history = train_erm(params, rho, seed, max_epochs)
    return {
        "rho": rho,
        "seed": seed,
        "image_size": params["image_size"],
        "train_size": len(sets["train"]),
        "val_biased_size": len(sets["val_biased"]),
        "history": {
            k: [round(float(r[k]), 6) for r in history.rows]
            for k in ("epoch", "loss", "val_acc", "val_worst_class", "time_s")
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="full")
    ap.add_argument("--rhos", type=float, nargs="+", default=[0.99, 0.999])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--image-sizes", type=int, nargs="+", default=[14, 28])
    ap.add_argument("--max-epochs", type=int, default=24)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    base = dict(chapter_run(bg.CHAPTER, args.profile, None).params)
    commit = git_commit()
    for size in args.image_sizes:
        for rho in args.rhos:
            for seed in args.seeds:
                t0 = time.perf_counter()
                rec = erm_curve({**base, "image_size": size}, rho, seed, args.max_epochs)
                rec.update(
                    profile=args.profile,
                    epochs_of_profile=base["epochs"],
                    threads=torch.get_num_threads(),
                    cpu=cpu_model(),
                    wall_s=round(time.perf_counter() - t0, 1),
                    commit=commit,
                )
                with args.out.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                h = rec["history"]
                print(
                    f"{size}px rho {rho} seed {seed}: val acc by epoch "
                    + " ".join(f"{v:.3f}" for v in h["val_acc"])
                    + f" ({rec['wall_s']:.0f} s)",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
