"""Mixed precision without a GPU: CPU bf16 autocast stands in for the bf16 autocast that ``fit``
uses on CUDA.

Statistics and evaluation must come out in float32 even while the training forward runs in bf16.
"""

import contextlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import helpers.train as T
from helpers.methods.hsic import hsic_biased, hsic_unbiased, median_sigma, rbf_kernel
from helpers.methods.rebias import independent_step, rebias_step
from helpers.models import LeNet, SimpleConvNet
from helpers.tensordata import TensorData
from helpers.train import Batch

BF16 = dict(device_type="cpu", dtype=torch.bfloat16)


@pytest.fixture
def fit_autocast(monkeypatch):
    """Make ``fit`` and ``predict`` autocast on CPU exactly as they do on CUDA."""
    monkeypatch.setattr(T, "autocast", lambda device, enabled=True: torch.autocast(**BF16))


def _rel(a, b) -> float:
    a, b = float(a), float(b)
    return abs(a - b) / max(abs(b), 1e-12)


def _features(width=1.0, m=128):
    torch.manual_seed(0)
    f, g = SimpleConvNet(7, width=width), SimpleConvNet(1, width=width)
    x = torch.rand(m, 3, 28, 28, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        return f.features(x), g.features(x)


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_hsic_is_float32_inside_bf16_autocast(width):
    ff, gf = _features(width)
    ref = {
        "k": rbf_kernel(ff, 1.0),
        "u": hsic_unbiased(ff, gf),
        "b": hsic_biased(ff, gf),
        "s": median_sigma(ff),
    }
    with torch.autocast(**BF16):
        got = {
            "k": rbf_kernel(ff, 1.0),
            "u": hsic_unbiased(ff, gf),
            "b": hsic_biased(ff, gf),
            "s": median_sigma(ff),
        }
    assert got["k"].dtype == torch.float32
    assert (got["k"] - ref["k"]).abs().max() < 1e-6  # bf16 x @ x.T: errors of ~0.02-0.07 per entry
    for key in "ubs":
        assert _rel(got[key], ref[key]) < 1e-5, key  # bf16: 4-11 %


class ElementwiseNet(nn.Module):
    """A network without matmuls or convolutions, so autocast leaves its forward and backward in
    float32: whatever differs under bf16 autocast must come from the step function itself."""

    def __init__(self, seed: int, dim: int = 12):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(dim, generator=g))
        self.b = nn.Parameter(torch.randn(dim, generator=g))
        self.dim = dim

    def features(self, x):
        return torch.tanh(x.flatten(1)[:, : self.dim] * self.w + self.b)

    def forward_with_features(self, x):
        feats = self.features(x)
        return 3 * feats[:, :10], feats

    def forward(self, x):
        return self.forward_with_features(x)[0]


def _batch(m=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(
        x=torch.rand(m, 3, 28, 28, generator=g) * 2 - 1,
        y=torch.randint(0, 10, (m,), generator=g),
        bias=None,
        extras={},
        idx=torch.arange(m),
    )


def _run_step(make_step, nets, bf16: bool, m: int = 64):
    f, g = nets()
    step = make_step(
        f, g, torch.optim.SGD(f.parameters(), 0.1), torch.optim.SGD(g.parameters(), 0.1)
    )
    with torch.autocast(**BF16) if bf16 else contextlib.nullcontext():
        logged = step(_batch(m))
    return {k: float(v) for k, v in logged.items()}, [
        p.detach().clone() for p in (*f.parameters(), *g.parameters())
    ]


@pytest.mark.parametrize("make_step", [rebias_step, independent_step])
def test_rebias_steps_are_exact_under_autocast_when_the_networks_are(make_step):
    nets = lambda: (ElementwiseNet(0), ElementwiseNet(1))  # noqa: E731
    ref, ref_params = _run_step(make_step, nets, bf16=False)
    got, got_params = _run_step(make_step, nets, bf16=True)
    for k in ref:
        assert _rel(got[k], ref[k]) < 1e-6, k
    assert all(torch.equal(a, b) for a, b in zip(got_params, ref_params))  # HSIC's backward too


@pytest.mark.parametrize("make_step", [rebias_step, independent_step])
def test_rebias_steps_with_bf16_convnets_stay_close_to_float32(make_step):
    def nets():
        torch.manual_seed(0)
        return SimpleConvNet(7), SimpleConvNet(1)

    m = 32  # bf16 convolutions are slow on a CPU: a small batch keeps the test short
    ref, _ = _run_step(make_step, nets, bf16=False, m=m)
    got, _ = _run_step(make_step, nets, bf16=True, m=m)
    assert _rel(got["loss"], ref["loss"]) < 1e-3 and _rel(got["g_loss"], ref["g_loss"]) < 1e-3
    assert abs(got["acc"] - ref["acc"]) <= 1 / m and abs(got["g_acc"] - ref["g_acc"]) <= 1 / m
    assert (
        _rel(got["hsic"], ref["hsic"]) < 3e-2
    )  # bf16 features only (~0.5 %); a bf16 kernel gave 20-40 %


def _images(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorData(
        torch.rand(n, 3, 28, 28, generator=g) * 2 - 1, torch.randint(0, 10, (n,), generator=g)
    )


def test_predict_is_float32_under_fit_autocast(fit_autocast):
    torch.manual_seed(0)
    model, data = LeNet(), _images()
    with T.autocast(data.device):  # the emulation is active: a bf16 forward really differs
        assert not torch.equal(model.eval()(data.x).float(), T.predict(model, data))
    ref = T.predict(model, data)
    with torch.autocast(**BF16):  # also inside a step (an outer autocast)
        inside = T.predict(model, data)
    mixed = T.predict(model, data, mixed_precision=True)
    assert ref.dtype == inside.dtype == torch.float32
    assert torch.equal(inside, ref)
    with torch.no_grad():
        assert torch.allclose(ref, model(data.x), rtol=1e-5, atol=1e-6)
    assert not torch.equal(mixed, ref)  # the caller can still ask for bf16
    assert T.accuracy_on(model, data) == T.accuracy(data.y, ref.argmax(1))


def test_fit_logs_close_to_float32_and_evaluates_in_float32(fit_autocast, monkeypatch):
    def train():
        torch.manual_seed(0)
        model, data = LeNet(), _images()
        opt = torch.optim.SGD(model.parameters(), 0.05)
        h = T.fit(
            data,
            T.supervised_step(model, opt),
            epochs=1,
            batch_size=100,
            modules=model,
            seed=0,
            progress=False,
            evaluate=lambda: {
                "dev_loss": float(F.cross_entropy(T.predict(model, data), data.y)),
                "dev_acc": T.accuracy_on(model, data),
            },
        )
        with torch.no_grad():  # a float32 reference evaluation of the same trained weights
            logits = model.eval()(data.x)
        return (
            h.rows[-1],
            float(F.cross_entropy(logits, data.y)),
            T.accuracy(data.y, logits.argmax(1)),
        )

    row, loss32, acc32 = train()
    assert _rel(row["dev_loss"], loss32) < 1e-6 and row["dev_acc"] == acc32
    bf16_row = row
    monkeypatch.undo()
    row32, _, _ = train()
    assert _rel(bf16_row["loss"], row32["loss"]) < 1e-2  # the training forward itself is bf16


def _train_first_epoch(method: str) -> dict:
    """The first epoch's logged row of a fit-based trainer on a small fixed problem."""
    from helpers.data import background_mnist as B
    from helpers.methods import caml as C
    from helpers.methods import group_methods as G
    from helpers.methods.pairing import paired_step
    from helpers.models import Adapter, MarginHead

    g = torch.Generator().manual_seed(5)
    torch.manual_seed(0)
    if method == "paired":
        mask, y = (
            torch.rand(128, 1, 28, 28, generator=g) > 0.8,
            torch.randint(0, 10, (128,), generator=g),
        )
        data = TensorData(
            B.to_float(B.compose(mask, B.backgrounds("pure", 128, g))), y, extras={"mask": mask}
        )
        model = LeNet()
        h = T.fit(
            data,
            paired_step(model, torch.optim.SGD(model.parameters(), 0.05), seed=2),
            epochs=1,
            batch_size=32,
            modules=model,
            seed=0,
            progress=False,
            evaluate=lambda: {"val_acc": T.accuracy_on(model, data)},
        )
    else:
        data = TensorData(
            torch.randn(256, 64, generator=g),
            torch.randint(0, 2, (256,), generator=g),
            torch.randint(0, 2, (256,), generator=g),
        )
        cfg = T.TrainConfig(epochs=1, batch_size=64, lr=1e-3, weight_decay=0.0, seed=0)
        if method == "lff":
            h = G.train_lff(Adapter(64), data, data, cfg, desc=method).history
        elif method == "groupdro":
            h = G.train_groupdro(Adapter(64), data, data, cfg, desc=method).history
        else:
            clusters, table = (
                torch.randint(0, 3, (256,), generator=g),
                torch.rand(3, 2, generator=g),
            )
            h = C.train_caml(
                MarginHead(64), data, data, clusters, table, cfg, sigma=0.1, scale=8.0, desc=method
            ).history
    return {k: v for k, v in h.rows[0].items() if k not in ("epoch", "time_s")}


@pytest.mark.parametrize("method", ["paired", "lff", "groupdro", "caml"])
def test_trainers_under_fit_autocast_stay_close_to_float32(monkeypatch, method):
    ref = _train_first_epoch(method)
    monkeypatch.setattr(T, "autocast", lambda device, enabled=True: torch.autocast(**BF16))
    got = _train_first_epoch(method)
    assert got.keys() == ref.keys()
    for k in ref:
        # evaluated in float32; the weights differ only by one bf16 epoch
        if "acc" in k or "worst" in k:
            assert abs(got[k] - ref[k]) <= 0.02, k
        else:  # training losses and statistics of a bf16 forward (measured: 1e-4, consistency 3e-3)
            assert _rel(got[k], ref[k]) < (1e-2 if k == "consistency" else 2e-3), k


# -------------------------------------------------------------------------- reproducibility on CUDA
def test_cublas_workspace_is_set_at_import_of_helpers_device():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    code = "import os, helpers.train; print(os.environ['CUBLAS_WORKSPACE_CONFIG'])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == ":4096:8"


def test_start_chapter_sets_cublas_workspace_before_anything_else(monkeypatch):
    import os

    import helpers.book.chapter as C

    def fail(*args, **kwargs):
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8"
        raise RuntimeError("stop here")

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(C, "parameters_from_namespace", fail)
    with pytest.raises(RuntimeError, match="stop here"):
        C.start_chapter("06_caml", {})


# ------------------------------------------------------------------------------- precision decision
@pytest.mark.parametrize(
    ("native", "emulated", "expected"),
    [(True, True, torch.bfloat16), (False, True, None), (False, False, None)],
)
def test_autocast_dtype_bf16_only_where_the_gpu_has_it(monkeypatch, native, emulated, expected):
    from helpers import device as D

    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native or (including_emulation and emulated),
    )
    assert D.autocast_dtype("cuda") is expected
    assert D.autocast_dtype("cpu") is None and D.autocast_dtype("mps") is None
    assert isinstance(D.autocast("cpu"), contextlib.nullcontext)
    if expected is None:  # float32 on that GPU: no autocast at all
        assert isinstance(D.autocast("cuda"), contextlib.nullcontext)


def test_autocast_dtype_on_torch_without_the_emulation_argument(monkeypatch):
    from helpers import device as D

    for native in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: native)
        assert D.autocast_dtype(torch.device("cuda", 0)) is (torch.bfloat16 if native else None)


@pytest.mark.cuda
def test_cuda_fit_autocasts_in_the_decided_dtype():
    from helpers import device as D

    dev = torch.device("cuda")
    with D.autocast(dev):
        out = torch.ones(8, 8, device=dev) @ torch.ones(8, 8, device=dev)
    assert out.dtype == (D.autocast_dtype(dev) or torch.float32)


# -------------------------------------------------------------- CUDA only (benchmarks/gpu_check.sh)
def _cuda_syncs(fn) -> int:
    """How many synchronising CUDA calls ``fn()`` makes (torch's sync debug mode, as warnings)."""
    import warnings

    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


@pytest.mark.cuda
def test_cuda_hsic_and_predict_are_float32_inside_fit_autocast():
    from helpers import device as D

    dev = torch.device("cuda")
    ff, gf = (t.to(dev) for t in _features(1.0))
    ref = float(hsic_unbiased(ff, gf))
    with D.autocast(dev):
        assert (
            _rel(hsic_unbiased(ff, gf), ref) < 1e-4
        )  # TF32-free float32 matmuls may still differ slightly
    torch.manual_seed(0)
    model, data = LeNet().to(dev), T.to_device(_images(), dev)
    with torch.no_grad(), D.full_precision(dev):
        ref_logits = model.eval()(data.x)
    with D.autocast(dev):
        assert T.predict(model, data).dtype == torch.float32
        assert torch.allclose(T.predict(model, data), ref_logits, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
def test_cuda_fit_trains_models_in_channels_last():
    dev = torch.device("cuda")
    torch.manual_seed(0)
    model = SimpleConvNet(7, width=0.25).to(dev)
    data = T.to_device(_images(64), dev)
    T.fit(
        data,
        T.supervised_step(model, torch.optim.SGD(model.parameters(), 0.01)),
        epochs=1,
        batch_size=32,
        modules=model,
        seed=0,
        progress=False,
    )
    assert data.x.is_contiguous(memory_format=torch.channels_last)
    assert model.body[0].weight.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.cuda
@pytest.mark.parametrize(
    "method", ["rebias", "paired_basic", "paired_mixture", "lff", "groupdro", "caml"]
)
def test_cuda_steps_do_not_sync_with_the_host(method):
    """A step that reads a device value back (``.item()``, ``bool(t)``, ``nonzero``, a CPU->GPU
    copy) waits for the GPU. The syncs of one epoch must not grow with its number of steps (fit
    syncs once per epoch)."""
    from helpers.methods import caml as C
    from helpers.methods import group_methods as G
    from helpers.methods.pairing import paired_step
    from helpers.models import Adapter, MarginHead

    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)

    def run(n):  # one epoch of n samples in batches of 32, after a warm-up call
        if method == "rebias" or method.startswith("paired"):
            y = torch.randint(0, 10, (n,), generator=g)
            mask = torch.rand(n, 1, 28, 28, generator=g) > 0.8
            x = torch.rand(n, 3, 28, 28, generator=g) * 2 - 1
            data = T.to_device(TensorData(x, y, extras={"mask": mask}), dev)
            if method == "rebias":
                f, h = SimpleConvNet(7, width=0.25).to(dev), SimpleConvNet(1, width=0.25).to(dev)
                step = rebias_step(
                    f, h, torch.optim.Adam(f.parameters()), torch.optim.Adam(h.parameters())
                )
                modules = [f, h]
            else:
                f = LeNet().to(dev)
                step = paired_step(
                    f, torch.optim.Adam(f.parameters()), augment_mode=method.split("_")[1]
                )
                modules = [f]
            train = lambda: T.fit(
                data,
                step,
                epochs=1,
                batch_size=32,
                modules=modules,
                seed=0,  # noqa: E731
                progress=False,
            )
        else:
            feats, y, b = (
                torch.randn(n, 16, generator=g),
                torch.randint(0, 2, (n,), generator=g),
                torch.randint(0, 2, (n,), generator=g),
            )
            data = T.to_device(TensorData(feats, y, b), dev)
            cfg = T.TrainConfig(epochs=1, batch_size=32, lr=1e-3, weight_decay=0.0, seed=0)
            if method == "lff":
                train = lambda: G.train_lff(Adapter(16).to(dev), data, data[:8], cfg)  # noqa: E731
            elif method == "groupdro":
                train = lambda: G.train_groupdro(Adapter(16).to(dev), data, data[:8], cfg)  # noqa: E731
            else:
                clusters, table = (
                    torch.randint(0, 3, (n,), generator=g),
                    torch.rand(3, 2, generator=g),
                )
                train = lambda: C.train_caml(
                    MarginHead(16).to(dev),
                    data,
                    data[:8],
                    clusters,
                    table,  # noqa: E731
                    cfg,
                    sigma=0.1,
                    scale=8.0,
                )
        train()  # warm-up: lazy initialisation, cached device copies
        return _cuda_syncs(train)

    assert run(32 * 8) == run(32 * 2)


@pytest.mark.parametrize("avx512", [True, False])
def test_cpu_layout_is_channels_last_only_for_opted_in_networks_on_avx512(monkeypatch, avx512):
    """The CPU layout follows the instruction set (never a run-time timing) and the network's
    opt-in: FusionLeNet (chapter 02's Fisher step) trains in channels_last on AVX-512 only."""
    from helpers import device as D
    from helpers.models import FusionLeNet, LeNet
    from helpers.train import fit, supervised_step

    monkeypatch.setattr(D, "cpu_has_avx512", lambda: avx512)
    cpu = torch.device("cpu")
    want = torch.channels_last if avx512 else torch.contiguous_format
    assert D.memory_format(cpu, FusionLeNet()) == want
    assert D.memory_format(cpu, LeNet()) == torch.contiguous_format
    assert D.memory_format(cpu) == torch.contiguous_format
    model = FusionLeNet()
    data = TensorData(torch.rand(8, 1, 28, 28), torch.arange(8) % 10)
    step = lambda b: supervised_step(lambda x: model(x, torch.zeros(len(x), 3)), opt)(b)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fit(data, step, epochs=1, batch_size=4, modules=model, seed=0, progress=False)
    assert model.image[3].weight.is_contiguous(memory_format=want)  # conv2: 6 input channels
