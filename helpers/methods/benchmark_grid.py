"""Chapter 08's benchmark: every de-biasing method of the book on one Biased MNIST protocol.

One cell = one method with one value of its own knob (a *trial*) at one training ρ and seed. The
chapter and ``python -m helpers.book sweep --chapters 08`` call the same :func:`train_cell`, which
trains through the checksummed, content-keyed checkpoint cache, so a cell a sweep worker trained is
the cell the chapter loads.

**Data** (:func:`load_sets`), for each (ρ, seed), from the MNIST training digits: ``train`` at ρ,
``val_biased`` (same ρ: the validation set a practitioner has) and a small ``val_group`` coloured at
ρ = 0.1 with its colours recorded (bias labels known: what GroupDRO/DFR/JTT's selection assume),
split into ``val_group_fit`` (DFR re-fits its last layer on it) and ``val_group`` (selection); the
``test`` set is the official MNIST test split coloured at ρ = 0.1 (the unbiased test of ReBias's
Table 1). Groups are (digit, colour): 100 of them.

**One backbone, one optimiser, one budget**: chapter 01's LeNet-5 (:class:`Backbone`) for every
network that is evaluated, Adam with one learning rate and weight decay, the same epochs and batch
size, no schedule. ReBias, RUBi and LearnedMixin+H add their colour-only g (ReBias's 1×1
SimpleConvNet); LfF its second, biased copy of the backbone. Methods that build on a trained ERM
network (DFR, MaskTune, CAML) start from the ERM cell of the same (ρ, seed) with the first
weight-decay trial; CAML trains chapter 06's three stages on that network's frozen features, with
ten classes where chapter 06 has two.

**Selection** reads validation metrics only (:mod:`helpers.selection`): each trial is scored at its
last epoch by ``val_acc`` and ``val_worst_class`` on ``val_biased`` (rule (a), no bias labels) and
``val_worst_group`` on ``val_group`` (rule (b), bias labels on validation only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers import metrics as M
from helpers.book.chapter import ChapterRun
from helpers.cache import cached_run, checkpoint_path
from helpers.data.biased_mnist import PALETTE, make_biased_mnist
from helpers.data.mnist import load_mnist
from helpers.methods import caml as C
from helpers.methods import debias as D
from helpers.methods import masktune as MT
from helpers.methods import pairing as P
from helpers.methods import rebias as R
from helpers.methods.saliency import saliency_maps
from helpers.models import Adapter, LeNet, MarginHead
from helpers.seed import derive_seed, generator, seed_everything
from helpers.selection import validation_metrics
from helpers.tensordata import TensorData, random_subset
from helpers.train import (
    Batch,
    StepFn,
    TrainConfig,
    fit,
    predict,
    supervised_step,
    to_device,
)

CHAPTER = "08_benchmark"
NUM_CLASSES = NUM_BIASES = 10
# method -> (display name, the parameter holding its trial values, what the knob is)
METHODS: dict[str, tuple[str, str, str]] = {
    "erm": ("ERM", "weight_decays", "weight decay"),
    "rebias": ("ReBias", "rebias_lambdas", "λ (HSIC weight)"),
    "rubi": ("RUBi", "weight_decays", "weight decay"),
    "learned_mixin": ("LearnedMixin+H", "entropy_weights", "entropy weight"),
    "lff": ("LfF", "lff_qs", "GCE q"),
    "jtt": ("JTT", "jtt_upweights", "λ_up"),
    "groupdro": ("GroupDRO", "groupdro_etas", "η"),
    "reweight": ("ReWeight", "weight_decays", "weight decay"),
    "dfr": ("DFR", "dfr_cs", "C (inverse L1 strength)"),
    "masktune": ("MaskTune", "masktune_n_stds", "mask threshold n_std"),
    "caml": ("CAML", "caml_sigmas", "margin noise σ"),
    "pairing": ("Background pairing (oracle)", "pairing_lambdas", "consistency weight"),
}
BUILDS_ON_ERM = ("dfr", "masktune", "caml")
# what each method needs beyond (image, label): the chapter's "what it needs" table
NEEDS = {
    "erm": {},
    "rebias": {"bias-only network": "colour-only g (1×1 kernels)"},
    "rubi": {"bias-only network": "colour-only g"},
    "learned_mixin": {"bias-only network": "colour-only g", "extra stage": "g pre-training"},
    "lff": {"bias-only network": "a second network trained to be biased (GCE)"},
    "jtt": {"extra stage": "a short ERM run finds the error set"},
    "groupdro": {"bias labels in training": "yes"},
    "reweight": {"bias labels in training": "yes"},
    "dfr": {
        "bias labels in validation": "a group-balanced labelled set to re-fit on",
        "extra stage": "ERM, then a last-layer re-fit",
    },
    "masktune": {"extra stage": "ERM, saliency maps, one masked epoch"},
    "caml": {"extra stage": "ERM features, a bias-amplified head, k-means, a margin head"},
    "pairing": {"background mask": "yes (oracle augmentation)"},
}
TEST_METRICS = ("unbiased_acc", "worst_group_acc", "conflicting_acc", "aligned_acc")

_loaded: dict = {}


# ---------------------------------------------------------------------------------------- data
def _with_strokes(data: TensorData, images: torch.Tensor) -> TensorData:
    """Keep the stroke mask (1 on the digit, 0 on the background) for the oracle pairing."""
    strokes = (images != 0).unsqueeze(1).float()
    return TensorData(data.x, data.y, data.bias, {"strokes": strokes})


def _pool(data: TensorData, factor: int) -> TensorData:
    if factor == 1:
        return data
    extras = {k: F.avg_pool2d(v, factor) for k, v in data.extras.items()}
    return TensorData(F.avg_pool2d(data.x, factor), data.y, data.bias, extras)


def build_sets(params: Mapping[str, Any], rho: float, seed: int) -> dict[str, TensorData]:
    """The benchmark's splits at (ρ, seed) on the CPU (see the module docstring). A seed draws
    the split, the subsets and every colour."""
    mnist = load_mnist()
    n_vb, n_vg = params["val_biased_size"], params["val_group_size"]
    perm = torch.randperm(len(mnist["train_y"]), generator=generator(seed, "benchmark split"))
    if n_vb + n_vg >= len(perm) - 10:
        raise ValueError(
            f"val_biased_size + val_group_size = {n_vb + n_vg} leaves fewer than 10 training images"
        )
    parts = {
        "val_biased": perm[:n_vb],
        "val_group_all": perm[n_vb : n_vb + n_vg],
        "train": perm[n_vb + n_vg :],
    }
    rest = parts["train"]
    parts["train"] = rest[
        random_subset(len(rest), params["train_size"], derive_seed(seed, "train"), "train_size")
    ]
    colour_rho = {"train": rho, "val_biased": rho, "val_group_all": 0.1}
    sets = {}
    for name, idx in parts.items():
        images, labels = mnist["train_x"][idx], mnist["train_y"][idx]
        data = make_biased_mnist(
            images, labels, colour_rho[name], seed=derive_seed(seed, name, "colours")
        )
        sets[name] = _with_strokes(data, images)
    keep = random_subset(
        len(mnist["test_y"]), params["test_size"], derive_seed(seed, "test"), "test_size"
    )
    test_images = mnist["test_x"][keep]
    test = make_biased_mnist(
        test_images, mnist["test_y"][keep], 0.1, seed=derive_seed(seed, "test", "colours")
    )
    sets["test"] = _with_strokes(test, test_images)
    # DFR re-fits on one half of the group-labelled set; every method is selected on the other
    group = sets.pop("val_group_all")
    half = torch.randperm(len(group), generator=generator(seed, "val group halves"))
    sets["val_group_fit"] = group[half[: len(group) // 2]]
    sets["val_group"] = group[half[len(group) // 2 :]]
    factor = 28 // params["image_size"]
    return {k: _pool(v, factor) for k, v in sets.items()}


def load_sets(params: Mapping[str, Any], rho: float, seed: int, device) -> dict[str, TensorData]:
    """:func:`build_sets` on ``device``; the last (ρ, seed) is kept, so consecutive cells of one
    (ρ, seed) build the data once."""
    names = ("train_size", "val_biased_size", "val_group_size", "test_size", "image_size")
    key = (rho, seed, str(device), *(params[k] for k in names))
    if key not in _loaded:
        _loaded.clear()
        _loaded[key] = {k: to_device(v, device) for k, v in build_sets(params, rho, seed).items()}
    return _loaded[key]


# ------------------------------------------------------------------------------------- scoring
def scores(model: nn.Module, sets: Mapping[str, TensorData]) -> dict[str, float]:
    """Validation metrics for selection (``val_*``) and test metrics (``test_*``) of one trained
    network, all in float32 evaluation."""
    out = {}
    vb = sets["val_biased"]
    pred = predict(model, vb).argmax(1).cpu()
    out.update(validation_metrics(vb.y.cpu(), pred, num_classes=NUM_CLASSES))
    vg = sets["val_group"]
    pred = predict(model, vg).argmax(1).cpu()
    group = validation_metrics(
        vg.y.cpu(), pred, num_classes=NUM_CLASSES, bias=vg.bias.cpu(), num_biases=NUM_BIASES
    )
    out["val_worst_group"] = group["val_worst_group"]
    out.update({f"test_{k}": v for k, v in test_metrics(model, sets["test"]).items()})
    return out


def test_metrics(model: nn.Module, test: TensorData) -> dict[str, float]:
    """Unbiased accuracy, worst-group accuracy over the 100 (digit, colour) groups, and accuracy
    on the bias-conflicting (colour ≠ digit) and bias-aligned (colour = digit) test samples."""
    y, b = test.y.cpu(), test.bias.cpu()
    pred = predict(model, test).argmax(1).cpu()
    table = M.group_accuracy(y, b, pred, NUM_CLASSES, NUM_BIASES)
    conflicting = b != y
    return {
        "unbiased_acc": M.accuracy(y, pred),
        "worst_group_acc": M.worst_group_accuracy(table),
        "conflicting_acc": M.accuracy(y[conflicting], pred[conflicting]),
        "aligned_acc": M.accuracy(y[~conflicting], pred[~conflicting]),
    }


# ------------------------------------------------------------------------------------- methods
class Backbone(LeNet):
    """Chapter 01's LeNet-5 with what ReBias's steps and the saliency maps call: logits with the
    84-d features in one pass, and the last convolution."""

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.fc(feats), feats

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.body[3]


def backbone(params: Mapping[str, Any]) -> Backbone:
    """The one network every method trains and is evaluated on."""
    return Backbone(3, NUM_CLASSES, params["image_size"])


def trial_values(params: Mapping[str, Any], method: str) -> list:
    return list(params[METHODS[method][1]])


def check_grid(params: Mapping[str, Any]) -> None:
    """Every method gets the same number of trials (the protocol's equal tuning budget)."""
    counts = {METHODS[m][1]: len(trial_values(params, m)) for m in params["methods"]}
    if len(set(counts.values())) > 1:
        raise ValueError(
            f"every method needs the same number of trials; the trial lists have lengths {counts}"
        )
    unknown = [m for m in params["methods"] if m not in METHODS]
    if unknown:
        raise ValueError(f"methods {unknown} are not among {list(METHODS)}")
    for m in BUILDS_ON_ERM:
        if m in params["methods"] and "erm" not in params["methods"]:
            raise ValueError(f"methods: {m} builds on ERM, so 'erm' must be among them")


def _fit(params, train, step, modules, seed, sampler=D.shuffled, epochs=None, desc=""):
    return fit(
        train,
        step,
        epochs=params["epochs"] if epochs is None else epochs,
        batch_size=params["batch_size"],
        modules=modules,
        seed=seed,
        sampler=sampler,
        min_batch=4,  # the unbiased HSIC of ReBias needs 4 samples
        desc=desc,
        progress=False,
    )


def oracle_pairing_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, lam: float, seed: int
) -> StepFn:
    """Chapter 03's paired training with the oracle copy this data allows: the same digit on a
    background of a uniformly drawn palette colour (the strokes are known), loss CE(original) +
    CE(copy) + λ·‖logits − logits_copy‖² (:func:`helpers.methods.pairing.paired_loss`)."""
    gens: dict[str, torch.Generator] = {}

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        dev = batch.x.device
        gen = gens.get(str(dev))
        if gen is None:
            gen = gens[str(dev)] = torch.Generator(device=dev).manual_seed(
                derive_seed(seed, "oracle copies")
            )
        with torch.no_grad():
            colour = torch.randint(0, NUM_BIASES, (len(batch),), generator=gen, device=dev)
            bg = PALETTE.to(dev)[colour].float().div(255).mul(2).sub(1)[:, :, None, None]
            s = batch.extras["strokes"]
            copy = s * 1.0 + (1 - s) * bg  # a pooled stroke pixel blends white and background
        logits, logits_copy = model(torch.cat([batch.x, copy.to(batch.x.dtype)])).chunk(2)
        loss, parts = P.paired_loss(logits, logits_copy, batch.y, lam, "l2")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.detach(), "consistency": parts["consistency"].detach()}

    return step


def fit_last_layer(
    features: torch.Tensor, y: torch.Tensor, c: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """DFR's re-fit: standardised features, L1-penalised logistic regression (DFR's code uses
    liblinear, which is binary only; ten classes need the multinomial saga solver); returns the
    weight and bias of the equivalent linear layer on the raw features."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X = features.double().cpu().numpy()
    mu, sd = X.mean(0), X.std(0) + 1e-8
    clf = LogisticRegression(
        C=c, l1_ratio=1.0, solver="saga", max_iter=3000, tol=1e-3, random_state=seed
    )
    with warnings.catch_warnings():
        # saga stops at max_iter on a few hundred samples; its solution is then what DFR uses
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X - mu) / sd, y.cpu().numpy())
    w = clf.coef_ / sd  # (classes, features) on raw features
    b = clf.intercept_ - (clf.coef_ * (mu / sd)).sum(1)
    return torch.tensor(w, dtype=torch.float32), torch.tensor(b, dtype=torch.float32)


def frozen_features(model: Backbone, data: TensorData, chunk: int = 1024) -> TensorData:
    """``data`` as the trained ``model``'s penultimate (84-d) features, in eval mode (BatchNorm
    with its training statistics), labels and bias kept: what DFR and CAML fit on."""
    model.eval()
    with torch.no_grad():
        x = torch.cat([model.features(data.x[i : i + chunk]) for i in range(0, len(data), chunk)])
    return TensorData(x, data.y, data.bias)


class FrozenFeatureHead(nn.Module):
    """A head on a trained backbone's frozen features: how CAML's margin head is evaluated."""

    def __init__(self, backbone: Backbone, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone.requires_grad_(False), head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone.features(x))


def caml_heads(dim: int, classes: int, hidden: int = 128) -> tuple[Adapter, MarginHead]:
    """Chapter 06's bias-amplified adapter and margin head, with ``classes`` outputs instead of
    the two of Waterbirds-like data (the output layer and the class vectors are replaced)."""
    adapter, head = Adapter(dim, hidden), MarginHead(dim, hidden)
    adapter.out = nn.Linear(hidden, classes)
    head.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(classes, hidden)))
    return adapter, head


def margin_table(clusters: torch.Tensor, y: torch.Tensor, k: int, classes: int) -> torch.Tensor:
    """CAML's margin table for any number of classes: ``table[c, j]`` = share of class j in
    cluster c (rows sum to 1; an empty cluster gets the uniform row). With two classes it is
    :func:`helpers.methods.caml.pseudo_groups`' table."""
    counts = torch.zeros(k, classes)
    counts.index_put_((clusters.cpu(), y.cpu()), torch.ones(len(y)), accumulate=True)
    sizes = counts.sum(1, keepdim=True)
    return torch.where(sizes > 0, counts / sizes.clamp_min(1), torch.full_like(counts, 1 / classes))


def train_caml_stages(
    params: Mapping[str, Any],
    adapter: Adapter,
    head: MarginHead,
    train: TensorData,
    val_biased: TensorData,
    sigma: float,
    seed: int,
) -> dict:
    """CAML's three stages (chapter 06) on frozen features: (1) the adapter with class-balanced
    sampling and a high weight decay, kept at its best *training* accuracy; (2) k-means on its
    normalised hidden features, each cluster's class shares a row of the margin table; (3) the
    margin head with margins ``1 − N(table, σ²)``, kept at its best accuracy on the *biased*
    validation set (no bias labels anywhere: the benchmark's rule (a) data). The bias labels are
    read only to report how well the clusters recover the colour (NMI)."""
    cfg = TrainConfig(
        epochs=params["caml_head_epochs"],
        batch_size=params["batch_size"],
        lr=params["lr"],
        weight_decay=params["caml_stage1_weight_decay"],
        seed=seed,
    )
    C.train_adapter(adapter, train, cfg, desc="CAML stage 1")
    with torch.no_grad():
        hidden = adapter.features(train.x)
    groups = C.pseudo_groups(hidden, train.y, train.bias, params["caml_k"], random_state=seed)
    table = margin_table(groups["clusters"], train.y, params["caml_k"], NUM_CLASSES)
    stage3 = TrainConfig(
        epochs=cfg.epochs,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        weight_decay=params["weight_decays"][0],
        seed=seed,
    )
    C.train_caml(
        head,
        train,
        val_biased,
        groups["clusters"],
        table,
        stage3,
        sigma=sigma,
        scale=params["caml_scale"],
        desc="CAML stage 3",
    )
    return {"nmi_bias": groups["nmi_bias"], "nmi_target": groups["nmi_target"]}


@dataclass
class CellResult:
    method: str
    rho: float
    seed: int
    trial: int
    value: Any
    scores: dict[str, float]
    train_seconds: float  # this cell's own training (for DFR / MaskTune: the stage after ERM)
    base_seconds: float  # the ERM run it builds on (0 for end-to-end methods)
    from_cache: bool
    model: nn.Module


def cell_config(run: ChapterRun, method: str, rho: float, seed: int, trial: int) -> dict:
    value = trial_values(run.params, method)[trial]
    cfg = run.cache_config(method=method, rho=rho, seed=seed, knob=value)
    if method in BUILDS_ON_ERM:
        cfg["base"] = cell_config(run, "erm", rho, seed, 0)
    return cfg


def _train_end_to_end(run: ChapterRun, method: str, value, sets, seed: int):
    """Networks, and the function that trains them, of one end-to-end method."""
    p, dev = run.params, run.device
    train = sets["train"]
    wd = value if METHODS[method][1] == "weight_decays" else p["weight_decays"][0]
    if method in ("rebias", "rubi", "learned_mixin"):
        extra = {"lambda_f": value, "lambda_g": value} if method == "rebias" else {}
        if method == "learned_mixin":
            extra["entropy_weight"] = value
        setup = R.build(
            method,
            make_f=lambda: backbone(p),
            width=p["g_width"],
            device=dev,
            lr=p["lr"],
            weight_decay=wd,
            sigma=p["rbf_sigma"],
            train_extra_layers=True,
            g_input_pool=p["g_input_pool"],
            **extra,
        )

        def train_fn():
            R.train(
                setup,
                {"train": train, "val_biased": sets["val_biased"]},
                epochs=p["epochs"],
                batch_size=p["batch_size"],
                lr_step=p["epochs"] + 1,  # one optimiser for all methods: no schedule
                seed=seed,
                g_pretrain_epochs=p["g_pretrain_epochs"] if method == "learned_mixin" else 0,
                eval_splits=("val_biased",),
                progress=False,
            )
            return {}

        return setup.modules, setup.modules["f"], train_fn

    if method == "pairing":
        model = backbone(p).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=p["lr"], weight_decay=wd)
        step = oracle_pairing_step(model, opt, value, seed)

        def train_pairing():
            _fit(p, train, step, model, seed)
            return {}

        return {"model": model}, model, train_pairing

    kwargs = dict(lr=p["lr"], weight_decay=wd, num_classes=NUM_CLASSES, num_biases=NUM_BIASES)
    if method == "lff":
        kwargs["q"] = value
    if method == "groupdro":
        kwargs["eta"] = value
    if method == "jtt":
        # the network that is trained (stage 2), cached and evaluated
        model = backbone(p).to(dev)

        def train_jtt():
            # stage 1: a short ERM run whose training errors are the set to up-weight
            stage1 = backbone(p).to(dev)
            opt1 = torch.optim.Adam(stage1.parameters(), lr=p["lr"], weight_decay=wd)
            _fit(
                p,
                train,
                supervised_step(stage1, opt1),
                stage1,
                derive_seed(seed, "jtt stage 1"),
                epochs=p["jtt_epochs"],
            )
            wrong = D.jtt_error_set(stage1, train)
            setup = D.build(
                "jtt", lambda: model, train, error_set=wrong, upweight=int(value), **kwargs
            )
            _fit(p, train, setup.step, model, seed, setup.sampler)
            return {"error_set_size": int(wrong.sum())}

        return {"model": model}, model, train_jtt

    setup = D.build(method, lambda: backbone(p), train, **kwargs)

    def train_fn():
        _fit(p, train, setup.step, list(setup.modules.values()), seed, setup.sampler)
        return {}

    return setup.modules, setup.modules["model"], train_fn


def train_cell(run: ChapterRun, method: str, rho: float, seed: int, trial: int) -> CellResult:
    """Train (or load) one cell and score it on the validation and test sets."""
    p, dev = run.params, run.device
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    value = trial_values(p, method)[trial]
    sets = load_sets(p, rho, seed, dev)
    base_seconds = 0.0
    if method in BUILDS_ON_ERM:
        base = train_cell(run, "erm", rho, seed, 0)
        base_seconds = base.train_seconds
        sets = load_sets(p, rho, seed, dev)  # the ERM call may have rebuilt them
    seed_everything(seed)
    config = cell_config(run, method, rho, seed, trial)

    if method == "dfr":
        model = backbone(p).to(dev)
        model.load_state_dict(base.model.state_dict())

        def train_fn():
            fit_set = frozen_features(model, sets["val_group_fit"])
            w, b = fit_last_layer(fit_set.x, fit_set.y, value, seed)
            model.fc.weight.data.copy_(w.to(dev))
            model.fc.bias.data.copy_(b.to(dev))
            return {}

        modules, evaluated = {"model": model}, model
    elif method == "masktune":
        model = backbone(p).to(dev)
        model.load_state_dict(base.model.state_dict())

        def train_fn():
            train = sets["train"]
            maps = saliency_maps(model, train.x, model.cam_target_layer, method="xgradcam")
            masked = MT.apply_mask(train, MT.official_keep_mask(maps, value))
            opt = torch.optim.Adam(
                model.parameters(), lr=p["lr"], weight_decay=p["weight_decays"][0]
            )
            _fit(p, masked, supervised_step(model, opt), model, seed, epochs=1)
            return {"erased_fraction": MT.erased_fraction(MT.official_keep_mask(maps, value))}

        modules, evaluated = {"model": model}, model
    elif method == "caml":
        model = backbone(p).to(dev)
        model.load_state_dict(base.model.state_dict())
        feats = {k: frozen_features(model, sets[k]) for k in ("train", "val_biased")}
        adapter, head = caml_heads(feats["train"].x.shape[1], NUM_CLASSES)
        adapter, head = adapter.to(dev), head.to(dev)

        def train_fn():
            return train_caml_stages(
                p, adapter, head, feats["train"], feats["val_biased"], value, seed
            )

        modules, evaluated = {"adapter": adapter, "model": head}, FrozenFeatureHead(model, head)
    else:
        modules, evaluated, train_fn = _train_end_to_end(run, method, value, sets, seed)

    out = cached_run(f"ch08_{method}", config, modules, train_fn)
    for m in modules.values():
        m.eval()
    return CellResult(
        method,
        rho,
        seed,
        trial,
        value,
        scores(evaluated, sets),
        float(out.get("train_seconds") or 0.0),
        base_seconds,
        out["from_cache"],
        evaluated,
    )


# ------------------------------------------------------------------------------------ the grid
def seeds(params: Mapping[str, Any]) -> list[int]:
    return [params["seed"] + i for i in range(params["n_seeds"])]


def cells(params: Mapping[str, Any], methods=None) -> list[dict]:
    """Every (method, ρ, seed, trial) of the profile, ERM first (DFR and MaskTune build on it)."""
    methods = list(methods or params["methods"])
    n_trials = len(trial_values(params, methods[0]))
    return [
        {"method": m, "rho": r, "seed": s, "trial": t}
        for m in methods
        for r in params["rhos"]
        for s in seeds(params)
        for t in range(n_trials)
    ]


def stages(run: ChapterRun) -> list:
    """Two stages: every end-to-end method, then the methods that build on ERM."""
    check_grid(run.params)
    first = [m for m in run.params["methods"] if m not in BUILDS_ON_ERM]
    second = [m for m in run.params["methods"] if m in BUILDS_ON_ERM]
    out = [lambda r: cells(r.params, first)]
    if second:
        out.append(lambda r: cells(r.params, second))
    return out


def is_done(run: ChapterRun, cell: Mapping[str, Any]) -> bool:
    return checkpoint_path(f"ch08_{cell['method']}", cell_config(run, **cell)).is_file()


def run_cell(run: ChapterRun, cell: Mapping[str, Any]) -> None:
    train_cell(run, **cell)


# ------------------------------------------------------------------------------- the protocol
def select_trials(results: list[CellResult], rule_metric: str) -> dict[tuple, CellResult]:
    """Per (method, ρ, seed): the trial with the highest ``rule_metric`` (a validation metric;
    ties go to the first trial). DFR is left out of rules without bias labels: it cannot run
    without a group-labelled set."""
    if not rule_metric.startswith("val_"):
        raise ValueError(f"selection reads validation metrics only, got {rule_metric!r}")
    best: dict[tuple, CellResult] = {}
    for r in results:
        if r.method == "dfr" and rule_metric != "val_worst_group":
            continue
        key = (r.method, r.rho, r.seed)
        value = r.scores[rule_metric]
        if key not in best or value > best[key].scores[rule_metric]:
            best[key] = r
    return best


def summary_frame(chosen: Mapping[tuple, CellResult]):
    """Mean ± sample std (ddof 1) over seeds of every test metric, per (method, ρ)."""
    import pandas as pd

    rows = [
        {
            "method": r.method,
            "rho": r.rho,
            "seed": r.seed,
            **{k: r.scores[f"test_{k}"] for k in TEST_METRICS},
        }
        for r in chosen.values()
    ]
    frame = pd.DataFrame(rows)
    agg = frame.groupby(["method", "rho"], sort=False)[list(TEST_METRICS)].agg(
        ["mean", lambda s: s.std(ddof=1) if len(s) > 1 else np.nan, "count"]
    )
    agg.columns = [f"{m}_{s if s in ('mean', 'count') else 'std'}" for m, s in agg.columns]
    return agg
