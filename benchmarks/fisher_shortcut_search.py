"""Chapter 02's search for a Colored-MNIST setting in which the λ = 0 baseline takes the colour
shortcut: the reference's palette and noise, an evenly spread palette, less noise, and a larger
amplitude of the colour code.

Each run trains the chapter's late-fusion LeNet with plain cross-entropy (the chapter's λ = 0
baseline, through `fisher.fisher_step` with both weights 0) and records, per epoch, validation
accuracy on the coloured and grey sets and test accuracy on the coloured and the colour-conflicting
sets — the chapter later *chooses* the setting from the validation columns only; the test columns
show what the choice implies. It also fits a colour-only linear classifier (the W_c·c part of the
model, alone) and a colour-only MLP: how much the colour alone could tell, against how much the
model uses it.

    python benchmarks/fisher_shortcut_search.py --stds 0.1 0.02 --scales 1 3 10 30 --seeds 0 1
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from helpers.data import colored_mnist as cm
from helpers.methods import fisher as fi
from helpers.models import FusionLeNet
from helpers.seed import seed_everything
from helpers.train import fit, to_device

OUT = Path(__file__).parent / "results" / "fisher_shortcut_search.jsonl"


def git_commit() -> str:
    """HEAD, marked -dirty when tracked files differ from it."""
    git = ["git", "-C", str(Path(__file__).parent)]
    head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True, text=True)
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def one_run(palette: str, std: float, seed: int, args, scale: float = 1.0) -> dict:
    data = cm.build_colored_mnist(
        seed=seed,
        std=std,
        palette=palette,
        scale=scale,
        train_size=args.train_size,
        val_size=args.val_size,
    )
    sets = {k: to_device(v, "cpu") for k, v in data.sets.items()}
    seed_everything(seed)
    model = FusionLeNet()
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    cfg = fi.FisherConfig(lambda_image=0.0, lambda_colour=0.0, n_samples=10, knn_value=219)
    names = ("val_colored", "val_gray", "test_colored", "test_gray", "test_conflicting")
    start = time.perf_counter()
    hist = fit(
        sets["train"],
        fi.fisher_step(model, opt, cfg),
        epochs=args.epochs,
        batch_size=128,
        modules=model,
        seed=seed,
        evaluate=lambda: {f"{k}_acc": cm.accuracy(model, sets[k]) for k in names},
        desc=f"{palette} std={std} seed={seed}",
    )
    rows = hist.frame()
    return {
        "settings": {
            "palette": palette,
            "std": std,
            "scale": scale,
            "seed": seed,
            "epochs": args.epochs,
            "train_size": args.train_size,
            "lr": args.lr,
        },
        "min_colour_distance": cm.min_colour_distance(data.table)[0],
        "colour_only_linear_test_acc": cm.colour_only_accuracy(sets, None, seed),
        "colour_only_mlp_test_acc": cm.colour_only_accuracy(sets, 64, seed),
        "history": {c: rows[c].round(4).tolist() for c in rows.columns if c.endswith("_acc")},
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "git_commit": git_commit(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--palettes", nargs="+", default=["uniform", "sphere"], choices=cm.PALETTES)
    ap.add_argument("--stds", nargs="+", type=float, default=[0.1, 0.02])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--scales", nargs="+", type=float, default=[1.0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--train-size", type=int, default=6400)
    ap.add_argument("--val-size", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--out", type=Path, default=OUT, help="JSON lines, appended")
    args = ap.parse_args()
    torch.set_num_threads(2)
    args.out.parent.mkdir(exist_ok=True)
    for palette, std, scale, seed in itertools.product(
        args.palettes, args.stds, args.scales, args.seeds
    ):
        row = one_run(palette, std, seed, args, scale)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        h = row["history"]
        print(
            f"{palette:8s} std={std:<5} scale={scale:<4g} seed={seed}: "
            f"val col {h['val_colored_acc'][-1]:.3f}"
            f" grey {h['val_gray_acc'][-1]:.3f} | test col {h['test_colored_acc'][-1]:.3f}"
            f" conf {h['test_conflicting_acc'][-1]:.3f} | colour-only lin "
            f"{row['colour_only_linear_test_acc']:.3f} mlp "
            f"{row['colour_only_mlp_test_acc']:.3f} ({row['seconds']} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
