"""Time per training step of each end-to-end debiasing method relative to ERM (LeNet, one thread).

Each method's step (:func:`helpers.methods.debias.build`) is called on the same random batches of
Biased-MNIST-shaped images (3 × 28 × 28, 10 classes, 10 colours); the per-sample state (LfF's loss
EMAs, ReWeight's weights) is sized for the full 60,000-image training set. Samplers run once per
epoch, so their cost is added per step as (one epoch's draw) / (steps per epoch). Methods are timed
in interleaved rounds and the median round is reported, which keeps a busy machine's noise out of
the ratios.

    python benchmarks/debias_steps.py [--batch-size 128] [--steps 30] [--rounds 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from helpers.methods import debias as D
from helpers.models import LeNet
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import Batch


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--train-size", type=int, default=60_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, bs = args.train_size, args.batch_size
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (n,), generator=gen)
    bias = torch.where(
        torch.rand(n, generator=gen) < 0.99, y, torch.randint(0, 10, (n,), generator=gen)
    )
    # the per-sample state needs the labels of the whole set, not its images
    train = TensorData(torch.empty(n, 0), y, bias)
    wrong = torch.rand(n, generator=gen) < 0.02
    batches = []
    for _ in range(args.steps):
        idx = torch.randperm(n, generator=gen)[:bs]
        batches.append(Batch(torch.randn(bs, 3, 28, 28, generator=gen), y[idx], bias[idx], {}, idx))
    steps_per_epoch = -(-n // bs)
    setups = {}
    for method in D.METHODS:
        seed_everything(0)
        kw = {"error_set": wrong, "upweight": 20} if method == "jtt" else {}
        setups[method] = D.build(method, LeNet, train, lr=1e-3, num_classes=10, num_biases=10, **kw)
        for b in batches[:3]:  # warm-up
            setups[method].step(b)
    times = {m: [] for m in D.METHODS}
    for _ in range(args.rounds):
        for method, setup in setups.items():
            t0 = time.perf_counter()
            for b in batches:
                setup.step(b)
            step_s = (time.perf_counter() - t0) / len(batches)
            t0 = time.perf_counter()
            setup.sampler(n, torch.Generator().manual_seed(1))
            times[method].append(step_s + (time.perf_counter() - t0) / steps_per_epoch)
    per_step = {m: statistics.median(t) for m, t in times.items()}
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_average_1min": os.getloadavg()[0],  # other processes' load: ratios, not times, travel
        "torch": torch.__version__,
        "batch_size": bs,
        "threads": args.threads,
        "train_size": n,
        "ms_per_step": {m: 1000 * t for m, t in per_step.items()},
        "relative_to_erm": {m: t / per_step["erm"] for m, t in per_step.items()},
    }
    print(f"LeNet, batch {bs}, {args.threads} thread(s), state for {n:,} training images")
    for m in D.METHODS:
        print(
            f"  {m:9s} {out['ms_per_step'][m]:7.2f} ms/step  x{out['relative_to_erm'][m]:.2f} ERM"
        )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()
