"""Training-step time of the book's convolutional models in the contiguous (NCHW) layout against
channels_last (NHWC), on the chosen device (CPU by default), including chapter 02's Fisher step.

The loop (``helpers.train.fit``) puts models in channels_last on CUDA, and on AVX-512 CPUs for the
networks that opt in (``cpu_channels_last``, see ``helpers.device.memory_format``); this benchmark
is what decides which networks opt in. The steps alternate between the layouts, so a change in the
machine's load affects both alike.

    python benchmarks/memory_format.py [--device cpu] [--batch-size 128] [--steps 40] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F

from helpers.device import cpu_has_avx512, describe, pick_device
from helpers.hardware import cpu_model
from helpers.methods import fisher as fi
from helpers.models import FusionLeNet, LeNet, MultiTaskEncoder, SimpleConvNet, SmallCNN
from helpers.seed import seed_everything
from helpers.train import Batch

MODELS = {
    "LeNet (ch 01, 02)": lambda: LeNet(),
    "SmallCNN (ch 04)": lambda: SmallCNN(),
    "MultiTaskEncoder (ch 06)": lambda: MultiTaskEncoder(),
    "SimpleConvNet f, strides 2221 (ch 05 quick)": lambda: SimpleConvNet(
        7, width=0.5, strides=(2, 2, 2, 1)
    ),
    "SimpleConvNet g, input pool 4 (ch 05 quick)": lambda: SimpleConvNet(
        1, width=0.5, input_pool=4
    ),
}


def logits_of(out):
    return out[0] if isinstance(out, tuple) else out


def plain_step(build, fmt, device, batch_size):
    """One Adam step of cross-entropy on a fixed batch, for a network built by ``build``."""
    seed_everything(0)
    model = build().to(device=device, memory_format=fmt)
    x = torch.randn(batch_size, 3, 28, 28, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch_size,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step():
        loss = F.cross_entropy(logits_of(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def fisher_step(fmt, device, batch_size):
    """Chapter 02's regulariser step (reference settings: n = 10, k = 219) on a fixed batch."""
    seed_everything(0)
    model = FusionLeNet().to(device=device, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = fi.fisher_step(model, opt, fi.FisherConfig())
    batch = Batch(
        torch.rand(batch_size, 1, 28, 28, device=device),
        torch.randint(0, 10, (batch_size,), device=device),
        None,
        {"colour": torch.rand(batch_size, 3, device=device)},
        torch.arange(batch_size, device=device),
    )
    return lambda: step(batch)


CASES = {
    **{
        name: (lambda build: lambda fmt, dev, b: plain_step(build, fmt, dev, b))(build)
        for name, build in MODELS.items()
    },
    "FusionLeNet Fisher step (ch 02)": fisher_step,
}


def timed(step, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start)


def compare(make, device, batch_size, steps, warmup=3) -> tuple[float, float]:
    """Median step time (ms) in NCHW and in NHWC, the two steps alternating."""
    a = make(torch.contiguous_format, device, batch_size)
    b = make(torch.channels_last, device, batch_size)
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for _ in range(steps):
        ta.append(timed(a, device))
        tb.append(timed(b, device))
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per layout")
    parser.add_argument(
        "--fisher-steps", type=int, default=10, help="timed Fisher steps per layout"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    rows = []
    cpu = cpu_model()
    print(f"{describe(device)}, {cpu}, AVX-512: {cpu_has_avx512()}, batch {args.batch_size}")
    print(f"{'model':46s} {'NCHW ms':>9s} {'NHWC ms':>9s} {'NCHW/NHWC':>10s}")
    for name, make in CASES.items():
        steps = args.fisher_steps if "Fisher" in name else args.steps
        nchw, nhwc = compare(make, device, args.batch_size, steps)
        rows.append({"model": name, "nchw_ms": nchw, "nhwc_ms": nhwc, "speedup": nchw / nhwc})
        print(f"{name:46s} {nchw:9.2f} {nhwc:9.2f} {nchw / nhwc:10.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "device": describe(device),
                    "cpu": cpu,
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__,
                    "batch_size": args.batch_size,
                    "load_average_1min": os.getloadavg()[0],
                    "speedup": "NCHW time / NHWC time (> 1: channels_last is faster)",
                    "rows": rows,
                },
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
