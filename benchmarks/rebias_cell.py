"""One cell of chapter 05 in the ``full`` profile, without Jupyter: Vanilla and ReBias at one ρ, as
the chapter trains them (seed_everything, then ``rebias.build`` and ``rebias.train``: SimpleConvNet
f / g, Adam, StepLR, ``fit`` with ``min_batch=4``, biased and unbiased test accuracy after every
epoch).

Imports only helpers modules that need torch / numpy / pandas (no grad-cam, no ART, no Jupyter), so
it runs on a bare GPU machine. A time budget stops training early (the record then says so and
projects the full time).

    python benchmarks/rebias_cell.py --json out.json [--rho 0.997] [--epochs 80] [--budget-s 270]
    python benchmarks/rebias_cell.py --dry-run   # CPU, synthetic data, one short epoch per method
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from helpers.data import biased_mnist as bm
from helpers.data.mnist import RAW_FILES, raw_dir
from helpers.device import autocast_dtype, describe, pick_device
from helpers.methods import rebias as R
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import to_device

FULL = dict(
    seed=0,
    train_size=None,
    test_size=None,
    width=1.0,
    epochs=80,
    lr_step=20,
    batch_size=256,
    lr=1e-3,
    weight_decay=1e-4,
    lambda_f=1.0,
    lambda_g=1.0,
    rbf_sigma=1.0,
)  # notebooks/profiles/05_rebias.yaml


def mnist_status() -> tuple[bool, str]:
    """Whether the MNIST cache is complete, and where it is expected."""
    where = raw_dir()
    missing = [n for n in RAW_FILES if not (where / n).is_file()]
    return (
        not missing,
        f"{where} ({'complete' if not missing else 'missing: ' + ', '.join(missing)})",
    )


def check_profile(p: dict) -> None:
    """FULL must match the chapter's ``full`` profile (a changed profile would silently time another
    cell)."""
    import yaml

    from helpers.cache import REPO_ROOT

    full = yaml.safe_load((REPO_ROOT / "notebooks/profiles/05_rebias.yaml").read_text())[
        "profiles"
    ]["full"]
    wrong = {
        k: (FULL[k], full[k])
        for k in FULL
        if k in full and k != "train_size" and FULL[k] != full[k]
    }
    if wrong or full.get("image_size") != 28 or 0.997 not in full["rhos"]:
        raise SystemExit(
            f"benchmarks/rebias_cell.py FULL differs from the chapter's full profile: {wrong}"
        )


class Budget:
    """Stop ``fit`` once ``seconds`` have passed (checked after each epoch)."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    def on_epoch_end(self, epoch, row, history) -> bool:
        return time.perf_counter() - self.t0 > self.seconds


def train_method(method: str, sets: dict, p: dict, device, budget_s: float) -> dict:
    seed_everything(p["seed"])
    setup = R.build(
        method,
        width=p["width"],
        device=device,
        lr=p["lr"],
        weight_decay=p["weight_decay"],
        lambda_f=p["lambda_f"],
        lambda_g=p["lambda_g"],
        sigma=p["rbf_sigma"],
    )
    t0 = time.perf_counter()
    h = R.train(
        setup,
        sets,
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        lr_step=p["lr_step"],
        seed=p["seed"],
        callbacks=[Budget(budget_s)],
        progress=False,
    )
    wall = time.perf_counter() - t0
    last = h.rows[-1]
    done = len(h.rows)
    return {
        "epochs_done": done,
        "complete": done == p["epochs"],
        "wall_s": round(wall, 1),
        "epoch_s_median": round(sorted(r["time_s"] for r in h.rows)[done // 2], 2),
        "projected_full_s": round(wall / done * p["epochs"], 1),
        "last_epoch": {k: round(float(v), 6) for k, v in last.items() if k != "epoch"},
        "unbiased_acc_curve": [round(r["unbiased_acc"], 4) for r in h.rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rho", type=float, default=0.997)
    parser.add_argument("--epochs", type=int, default=FULL["epochs"])
    parser.add_argument(
        "--train-size", type=int, default=FULL["train_size"], help="default: all 60k"
    )
    parser.add_argument(
        "--budget-s", type=float, default=270.0, help="training time for both methods together"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--dry-run", action="store_true", help="CPU, synthetic data, 2 batches, 1 epoch"
    )
    args = parser.parse_args()
    p = dict(FULL, epochs=args.epochs, train_size=args.train_size)
    ok, where = mnist_status()
    print(f"MNIST expected at {where} (<$SHORTCUT_BOOK_DATA or <repo>/data>/MNIST/raw)")
    check_profile(p)
    if args.dry_run:
        device = torch.device("cpu")
        p.update(epochs=1, batch_size=8, width=0.125)
        g = torch.Generator().manual_seed(0)
        sets = {
            k: TensorData(
                torch.rand(16, 3, 28, 28, generator=g) * 2 - 1,
                torch.randint(0, 10, (16,), generator=g),
                torch.randint(0, 10, (16,), generator=g),
            )
            for k in ("train", "biased", "unbiased")
        }
    else:
        if not ok:
            raise SystemExit(
                f"MNIST is not available: {where}. This machine has no network; copy the four raw "
                "files there (e.g. run with carry=['data/MNIST/raw'])."
            )
        device = pick_device(args.device)
        sets = {
            k: to_device(v, device)
            for k, v in bm.biased_mnist(
                args.rho, seed=p["seed"], train_size=p["train_size"], test_size=None
            ).items()
        }
    print(
        f"ReBias cell: rho={args.rho}, {len(sets['train'])} training images, {p['epochs']} "
        f"epochs, width {p['width']}, device {describe(device)}, autocast "
        f"{autocast_dtype(device)}, budget {args.budget_s:.0f} s for both methods"
    )
    record = {
        "rho": args.rho,
        "device": describe(device),
        "autocast": str(autocast_dtype(device)),
        "train_images": len(sets["train"]),
        "parameters": p,
        "dry_run": args.dry_run,
        "methods": {},
    }
    t0 = time.perf_counter()
    for k, method in enumerate(("vanilla", "rebias")):
        left = args.budget_s - (time.perf_counter() - t0)
        record["methods"][method] = res = train_method(method, sets, p, device, left / (2 - k))
        print(
            f"{method}: {res['epochs_done']}/{p['epochs']} epochs in {res['wall_s']} s (full run "
            f"~{res['projected_full_s']} s), unbiased acc "
            f"{res['last_epoch']['unbiased_acc']:.4f}, biased acc "
            f"{res['last_epoch']['biased_acc']:.4f}"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2)


if __name__ == "__main__":
    main()
