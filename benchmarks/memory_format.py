"""Training-step time of the book's convolutional models in the contiguous (NCHW) layout against
channels_last (NHWC), on the chosen device (CPU by default).

The loop (``helpers.train.fit``) puts models and images in channels_last on CUDA only; this
benchmark is what decides whether the CPU should too.

    python benchmarks/memory_format.py [--device cpu] [--batch-size 128] [--steps 40] \
        [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from helpers.device import describe, pick_device
from helpers.models import LeNet, MultiTaskEncoder, SimpleConvNet, SmallCNN
from helpers.seed import seed_everything

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


def step_ms(build, fmt, device, batch_size, steps, warmup=5) -> float:
    seed_everything(0)
    model = build().to(device=device, memory_format=fmt)
    x = torch.randn(batch_size, 3, 28, 28, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 2, (batch_size,), device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(warmup + steps):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = F.cross_entropy(logits_of(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    device = pick_device(args.device)
    rows = []
    print(f"{describe(device)}, batch {args.batch_size}, {args.steps} timed steps")
    print(f"{'model':46s} {'NCHW ms':>9s} {'NHWC ms':>9s} {'NHWC/NCHW':>10s}")
    for name, build in MODELS.items():
        nchw = step_ms(build, torch.contiguous_format, device, args.batch_size, args.steps)
        nhwc = step_ms(build, torch.channels_last, device, args.batch_size, args.steps)
        rows.append({"model": name, "nchw_ms": nchw, "nhwc_ms": nhwc, "ratio": nhwc / nchw})
        print(f"{name:46s} {nchw:9.2f} {nhwc:9.2f} {nhwc / nchw:10.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"device": describe(device), "batch_size": args.batch_size, "rows": rows},
                fh,
                indent=1,
            )


if __name__ == "__main__":
    main()
