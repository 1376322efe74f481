"""Training throughput of the book's loop against a reference-style DataLoader loop.

The reference implementations (e.g. clovaai/rebias) keep the dataset as uint8 HWC arrays, and a
``torch.utils.data.DataLoader`` applies ``ToTensor`` + ``Normalize`` to each sample in
``__getitem__`` and collates the batch on the CPU before copying it to the device. The book's loop
(``helpers.train.fit``) keeps the normalised tensors on the device and slices index batches. Both
train the same model with the same optimiser and batch size; the ratio is book / reference images
per second.

A second table times the ReBias step (:func:`helpers.methods.rebias.rebias_step`: f forwarded once,
the g-step sees f's features detached) against a reference-style step that forwards f twice and
back-propagates the g-step's HSIC through f as well (gradients that the f-step then discards), both
inside ``fit``.

    python benchmarks/throughput.py [--device auto] [--images 6144] [--batch-size 256] \
        [--json out.json]
    python benchmarks/throughput.py --dry-run  # a few CPU steps of every loop, synthetic data
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from helpers.data.biased_mnist import biased_mnist
from helpers.device import describe, pick_device, prepare_model
from helpers.methods.hsic import hsic_unbiased
from helpers.methods.rebias import rebias_step
from helpers.models import LeNet, SimpleConvNet
from helpers.seed import seed_everything
from helpers.tensordata import TensorData
from helpers.train import fit, supervised_step, to_device


class PerSampleDataset(Dataset):
    """uint8 HWC images transformed one sample at a time, as the reference datasets do."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray):
        import torchvision.transforms as T

        self.images, self.labels = images_hwc, labels
        self.transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def reference_loop(model, data, device, batch_size, epochs, workers):
    hwc = ((data.x.cpu() + 1) / 2 * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    loader = DataLoader(
        PerSampleDataset(hwc, data.y.numpy()),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(epochs):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    _sync(device)
    return epochs * len(hwc) / (time.perf_counter() - t0)


def book_loop(model, data, device, batch_size, epochs):
    on_device = to_device(data, device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    _sync(device)
    t0 = time.perf_counter()
    fit(
        on_device,
        supervised_step(model, opt),
        epochs=epochs,
        batch_size=batch_size,
        modules=model,
        seed=0,
        progress=False,
    )
    _sync(device)
    return epochs * len(data) / (time.perf_counter() - t0)


def reference_rebias_step(f, g, opt_f, opt_g, lambda_f=1.0, lambda_g=1.0, sigma=1.0):
    """ReBias as the reference trains it: f is forwarded in the g-step with its graph (HSIC
    back-propagates into f, whose gradients the f-step's zero_grad discards) and forwarded again in
    the f-step."""

    def step(batch):
        _, f_feat = f.forward_with_features(batch.x)
        g_logits, g_feat = g.forward_with_features(batch.x)
        loss_g = F.cross_entropy(g_logits, batch.y) - lambda_g * hsic_unbiased(
            g_feat, f_feat, sigma, sigma
        )
        opt_g.zero_grad()
        loss_g.backward()
        opt_g.step()
        f_logits, f_feat = f.forward_with_features(batch.x)
        g_feat = g.features(batch.x).detach()
        loss_f = F.cross_entropy(f_logits, batch.y) + lambda_f * hsic_unbiased(
            f_feat, g_feat, sigma, sigma
        )
        opt_f.zero_grad()
        loss_f.backward()
        opt_f.step()
        return {"loss": loss_f.detach()}

    return step


def rebias_throughput(make_step, data, device, batch_size, epochs, width):
    """Images per second of ``fit`` with a ReBias step (f: kernel 7, g: kernel 1), after a warm-up
    epoch."""
    seed_everything(0)
    f, g = (
        prepare_model(SimpleConvNet(7, width=width), device),
        prepare_model(SimpleConvNet(1, width=width), device),
    )
    step = make_step(
        f, g, torch.optim.Adam(f.parameters(), 1e-3), torch.optim.Adam(g.parameters(), 1e-3)
    )
    on_device = to_device(data, device)
    fit(
        on_device[: 4 * batch_size],
        step,
        epochs=1,
        batch_size=batch_size,
        modules=[f, g],
        seed=0,
        progress=False,
        min_batch=4,
    )
    _sync(device)
    t0 = time.perf_counter()
    fit(
        on_device,
        step,
        epochs=epochs,
        batch_size=batch_size,
        modules=[f, g],
        seed=0,
        progress=False,
        min_batch=4,
    )
    _sync(device)
    return epochs * len(data) / (time.perf_counter() - t0)


def synthetic(n: int, seed: int = 0) -> TensorData:
    """Random images in [-1, 1] with labels: for --dry-run, which must not need MNIST."""
    g = torch.Generator().manual_seed(seed)
    return TensorData(
        torch.rand(n, 3, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--images",
        type=int,
        default=None,
        help="training images (default: 6144 on CPU, 60000 on GPU)",
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--epochs", type=int, default=2, help="timed epochs (after one warm-up epoch)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="DataLoader workers of the reference loop"
    )
    parser.add_argument(
        "--rebias-width",
        type=float,
        default=None,
        help="SimpleConvNet width (default 1 on GPU, 0.25 on CPU)",
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument(
        "--dry-run", action="store_true", help="tiny CPU run on synthetic data: checks, no timing"
    )
    args = parser.parse_args()
    if args.dry_run:
        args.device, args.images, args.batch_size, args.epochs, args.rebias_width = (
            "cpu",
            32,
            8,
            1,
            0.125,
        )
        args.workers = 0

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    n = args.images or (60000 if on_gpu else 6144)
    width = args.rebias_width or (1.0 if on_gpu else 0.25)
    data = (
        synthetic(n)
        if args.dry_run
        else biased_mnist(0.99, seed=0, train_size=n, test_size=100)["train"]
    )
    rows = []
    for name, make in [
        ("LeNet", lambda: LeNet()),
        (f"SimpleConvNet k=7 width={width}", lambda: SimpleConvNet(7, width=width)),
    ]:
        res = {}
        for loop in ("reference", "book"):
            seed_everything(0)
            model = prepare_model(make(), device)
            # one untimed warm-up epoch on a slice (allocator, cuDNN autotuning, thread pools)
            book_loop(model, data[: 4 * args.batch_size], device, args.batch_size, 1)
            if loop == "reference":
                res[loop] = reference_loop(
                    model, data, device, args.batch_size, args.epochs, args.workers
                )
            else:
                res[loop] = book_loop(model, data, device, args.batch_size, args.epochs)
        rows.append(
            {
                "model": name,
                "reference_img_s": round(res["reference"]),
                "book_img_s": round(res["book"]),
                "ratio": round(res["book"] / res["reference"], 2),
            }
        )
    steps = {
        name: rebias_throughput(make, data, device, args.batch_size, args.epochs, width)
        for name, make in (("reference", reference_rebias_step), ("book", rebias_step))
    }
    rebias = {
        "model": f"ReBias step, SimpleConvNet width={width}",
        "reference_img_s": round(steps["reference"]),
        "book_img_s": round(steps["book"]),
        "ratio": round(steps["book"] / steps["reference"], 2),
    }
    header = (
        f"device: {describe(device)}, images: {n}, batch size: {args.batch_size}, epochs timed: "
        f"{args.epochs}, reference DataLoader workers: {args.workers}"
    )
    print(header)
    print(f"{'model':<34} {'reference img/s':>16} {'book img/s':>12} {'ratio':>7}")
    for r in rows + [rebias]:
        print(f"{r['model']:<34} {r['reference_img_s']:>16} {r['book_img_s']:>12} {r['ratio']:>7}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"setting": header, "rows": rows, "rebias_step": rebias, "dry_run": args.dry_run},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
