"""ReBias (Bahng et al. 2020) and its baselines as step functions for ``helpers.train.fit``.

Every method trains a shape-capable network ``f`` (``SimpleConvNet(7)``) next to a colour-only
network ``g`` (``SimpleConvNet(1)``); the networks need ``forward_with_features`` (logits and the
pooled features).

* :func:`independent_step` - Vanilla (f) and Biased (g) in one run: two plain cross-entropy updates,
  no coupling.
* :func:`rebias_step` - g minimises CE - λ_g·HSIC(g, f), then f minimises CE + λ_f·HSIC(f, g).
* :func:`rubi_step` - RUBi (Cadene et al. 2019): f's logits are masked by sigmoid(W·g_feat + c).
* :func:`learned_mixin_step` - LearnedMixin+H (Clark et al. 2019): f is trained in an ensemble with
  a frozen, pre-trained g whose logits are scaled by a learned gate s(x) = softplus(w·f_feat + c),
  plus an entropy penalty.
* :func:`build` makes the networks, optimisers and step of one method by name; :func:`train` runs
  it.

In each step the partner network's features are detached (computed without a graph), so one
network's update never moves the other and no gradient is computed only to be discarded.

The reference implementation never trains the extra linear layers of RUBi and LearnedMixin: they are
meant to be added to f's optimiser, but the check ``'fc' in criterion.__dict__`` is always False for
an ``nn.Module``. Here the extra layer gets its own optimiser ``opt_extra``; pass ``opt_extra=None``
to reproduce the reference behaviour (the layer keeps its random initial weights).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from helpers.device import full_precision
from helpers.methods.hsic import hsic_biased, hsic_unbiased, median_sigma
from helpers.models import SimpleConvNet
from helpers.seed import derive_seed
from helpers.tensordata import TensorData
from helpers.train import Batch, History, StepFn, accuracy_on, fit, supervised_step

ESTIMATORS = {"unbiased": hsic_unbiased, "biased": hsic_biased}
Sigma = float | str  # a fixed RBF width, or "median": the median heuristic on each batch


def _check_sigma(sigma: Sigma) -> None:
    if sigma == "median":
        return
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma > 0:
        raise ValueError(f'sigma must be a number > 0 or "median", got {sigma!r}')


def _widths(sigma: Sigma, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """Kernel widths for features ``a`` and ``b``: ``sigma`` itself, or each one's median
    pairwise distance in this batch (the reference's ImageNet choice, here per batch)."""
    if sigma == "median":
        return median_sigma(a.detach()), median_sigma(b.detach())
    return float(sigma), float(sigma)


def dependence_on(
    f: nn.Module, g: nn.Module, data: TensorData, sigma: Sigma = 1.0
) -> dict[str, float]:
    """How much f's features depend on g's on ``data`` (call in eval mode): HSIC₁ with the
    training kernel width, HSIC₁ with each side's median-heuristic width (invariant to rescaling
    the features), and the mean L2 norm of f's features. The last two tell real independence from
    a change of scale: an RBF kernel with a fixed σ reads far-apart features as independent. On an
    unbiased set colour says nothing about the digit, so any dependence of f on the colour-only g
    there is f reading colour."""
    with torch.no_grad(), full_precision(data.x.device):
        a, b = f.features(data.x).float(), g.features(data.x).float()
        return {
            "hsic": float(hsic_unbiased(a, b, *_widths(sigma, a, b))),
            "hsic_median": float(hsic_unbiased(a, b, median_sigma(a), median_sigma(b))),
            "f_feat_norm": float(a.norm(dim=1).mean()),
        }


def _check_nonneg(**values) -> None:
    for name, value in values.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _acc(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(1) == y).float().mean()


def _descend(loss: torch.Tensor, *optimizers: torch.optim.Optimizer | None) -> None:
    """One gradient step on ``loss`` for each optimiser given; ``None`` stands for a layer left
    untrained."""
    active = [opt for opt in optimizers if opt is not None]
    for opt in active:
        opt.zero_grad(set_to_none=True)
    # fit calls the step inside autocast; backward outside it runs each op in its forward's dtype,
    # so HSIC's gradient stays float32 (inside it, the backward matmuls of the kernel would be
    # recast to bf16)
    with full_precision(loss.device):
        loss.backward()
    for opt in active:
        opt.step()


def independent_step(
    f: nn.Module,
    g: nn.Module,
    opt_f: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    sigma: Sigma = 1.0,
) -> StepFn:
    """Vanilla f and Biased g trained side by side with plain cross-entropy (the reference's λ_f =
    λ_g = 0).

    HSIC(f, g) is only *measured* (no gradient) so that its curve can be compared with ReBias's.
    """
    _check_sigma(sigma)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        g_logits, g_feat = g.forward_with_features(batch.x)
        loss_g = F.cross_entropy(g_logits, batch.y)
        _descend(loss_g, opt_g)
        f_logits, f_feat = f.forward_with_features(batch.x)
        loss_f = F.cross_entropy(f_logits, batch.y)
        _descend(loss_f, opt_f)
        out = {
            "loss": loss_f.detach(),
            "acc": _acc(f_logits, batch.y),
            "g_loss": loss_g.detach(),
            "g_acc": _acc(g_logits, batch.y),
        }
        if len(batch) >= 4:
            with torch.no_grad():
                a, b = f_feat.detach().float(), g_feat.detach().float()
                out["hsic"] = hsic_unbiased(a, b, *_widths(sigma, a, b))
        return out

    return step


def rebias_step(
    f: nn.Module,
    g: nn.Module,
    opt_f: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    lambda_f: float = 1.0,
    lambda_g: float = 1.0,
    sigma: Sigma = 1.0,
    estimator: str = "unbiased",
) -> StepFn:
    """g minimises CE - λ_g·HSIC(g, f) first, then f minimises CE + λ_f·HSIC(f, g), on the same
    batch.

    f's forward pass is computed once: the g-step only needs f's (detached) features, and f does not
    change during the g-step, so the f-step reuses that forward pass (the reference runs f twice;
    the gradients are the same, only f's BatchNorm running statistics are updated once per iteration
    instead of twice).

    ``sigma="median"`` sets each network's kernel width to its features' median pairwise distance
    in the batch (a constant of the step, as the reference treats it).
    """
    _check_nonneg(lambda_f=lambda_f, lambda_g=lambda_g)
    _check_sigma(sigma)
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {sorted(ESTIMATORS)}, got {estimator!r}")
    hsic = ESTIMATORS[estimator]

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        f_logits, f_feat = f.forward_with_features(batch.x)
        # g-step: f only supplies fixed features
        g_logits, g_feat = g.forward_with_features(batch.x)
        sigma_f, sigma_g = _widths(sigma, f_feat, g_feat)
        hsic_g = hsic(g_feat.float(), f_feat.detach().float(), sigma_g, sigma_f)
        loss_g = F.cross_entropy(g_logits, batch.y) - lambda_g * hsic_g
        _descend(loss_g, opt_g)

        # f-step against the updated g, whose features are again fixed
        with torch.no_grad():
            g_feat_new = g.features(batch.x)
        if sigma == "median":
            sigma_g = median_sigma(g_feat_new)
        hsic_f = hsic(f_feat.float(), g_feat_new.float(), sigma_f, sigma_g)
        ce_f = F.cross_entropy(f_logits, batch.y)
        loss_f = ce_f + lambda_f * hsic_f
        _descend(loss_f, opt_f)
        return {
            "loss": ce_f.detach(),
            "acc": _acc(f_logits, batch.y),
            "hsic": hsic_f.detach(),
            "g_loss": loss_g.detach(),
            "g_acc": _acc(g_logits, batch.y),
        }

    return step


def rubi_step(
    f: nn.Module,
    g: nn.Module,
    head: nn.Module,
    opt_f: torch.optim.Optimizer,
    opt_g: torch.optim.Optimizer,
    opt_extra: torch.optim.Optimizer | None,
    question_weight: float = 1.0,
) -> StepFn:
    """RUBi: g trains with its own CE; f minimises CE(f_logits · sigmoid(b), y) + w·CE(b, y) with b
    = head(g_feat) on the features of the just-updated g, without a gradient into g (the reference
    multiplies g's gradient by 0).

    ``head`` is the extra ``Linear(feature_dim, classes)``; ``opt_extra=None`` leaves it untrained
    (reference bug). As in the reference, f's plain cross-entropy is not added; at test time only
    f's logits are used.
    """
    _check_nonneg(question_weight=question_weight)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        g_logits, g_feat = g.forward_with_features(batch.x)
        loss_g = F.cross_entropy(g_logits, batch.y)
        _descend(loss_g, opt_g)

        # the updated g, as the reference's f-step; no gradient into g (reference: × 0)
        with torch.no_grad():
            g_feat_new = g.features(batch.x)
        f_logits = f(batch.x)
        b = head(g_feat_new.float())
        loss_f = F.cross_entropy(
            f_logits * torch.sigmoid(b), batch.y
        ) + question_weight * F.cross_entropy(b, batch.y)
        _descend(loss_f, opt_f, opt_extra)
        with torch.no_grad():
            ce_f = F.cross_entropy(f_logits.float(), batch.y)
        return {
            "loss": ce_f,
            "rubi_loss": loss_f.detach(),
            "acc": _acc(f_logits, batch.y),
            "g_loss": loss_g.detach(),
            "g_acc": _acc(g_logits, batch.y),
        }

    return step


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of softmax(logits) over the batch."""
    logp = F.log_softmax(logits.float(), dim=1)
    return -(logp.exp() * logp).sum(1).mean()


def learned_mixin_step(
    f: nn.Module,
    g: nn.Module,
    gate: nn.Module,
    opt_f: torch.optim.Optimizer,
    opt_extra: torch.optim.Optimizer | None,
    entropy_weight: float = 0.36,
) -> StepFn:
    """LearnedMixin+H with a frozen g: s = softplus(gate(f_feat)), z_b = s·g_logits,
    loss = CE(f_logits + z_b, y) + w_H·H(softmax(z_b)).

    ``gate`` is the extra ``Linear(feature_dim, 1)``; ``opt_extra=None`` leaves it untrained
    (reference bug; the gradient still flows through the gate into f's features). g is not updated
    (pre-train it first) and runs in eval mode, so its BatchNorm statistics stay fixed too. Only f's
    logits are used at test time.
    """
    _check_nonneg(entropy_weight=entropy_weight)

    def step(batch: Batch) -> dict[str, torch.Tensor]:
        g.eval()
        with torch.no_grad():
            g_logits = g(batch.x).float()
        f_logits, f_feat = f.forward_with_features(batch.x)
        s = F.softplus(gate(f_feat.float()))  # (m, 1) scale of the bias-only logits
        z_b = s * g_logits
        ent = entropy(z_b)
        loss = F.cross_entropy(f_logits.float() + z_b, batch.y) + entropy_weight * ent
        _descend(loss, opt_f, opt_extra)
        with torch.no_grad():
            ce_f = F.cross_entropy(f_logits.float(), batch.y)
        return {
            "loss": ce_f,
            "mixin_loss": loss.detach(),
            "acc": _acc(f_logits, batch.y),
            "entropy": ent.detach(),
            "gate": s.detach().mean(),
        }

    return step


# ------------------------------------------------------------------------------ one call per method
METHODS = ("vanilla", "rebias", "rubi", "learned_mixin")


@dataclass
class MethodSetup:
    """Everything one method trains: its step, the networks, the optimisers that a schedule steps,
    and the networks evaluated after each epoch (``"f"`` reports ``biased_acc``/``unbiased_acc``,
    ``"g"`` ``g_…``)."""

    method: str
    step: StepFn
    modules: dict[str, nn.Module]
    optimisers: list[torch.optim.Optimizer]
    evaluated: dict[str, nn.Module]
    pretrain_g: torch.optim.Optimizer | None = None  # LearnedMixin+H: g is pre-trained, then frozen
    sigma: Sigma = 1.0  # the HSIC kernel width, also used by the per-epoch dependence diagnostics


def build(
    method: str,
    *,
    width: float,
    device,
    lr: float,
    weight_decay: float,
    lambda_f: float = 1.0,
    lambda_g: float = 1.0,
    sigma: Sigma = 1.0,
    train_extra_layers: bool = True,
    entropy_weight: float = 0.36,
    f_strides: Sequence[int] = (1, 1, 1, 1),
    g_input_pool: int = 1,
    make_f: Callable[[], nn.Module] | None = None,
) -> MethodSetup:
    """Build f = SimpleConvNet(7), g = SimpleConvNet(1), Adam optimisers and the step of ``method``.

    Call after seeding: the networks are initialised in a fixed order (f, g, then the extra layer).
    ``train_extra_layers=False`` leaves RUBi's head / LearnedMixin's gate untrained, as the
    reference does. ``f_strides`` and ``g_input_pool`` are the CPU-profile options of
    :class:`~helpers.models.SimpleConvNet` (the paper: no stride, no pooling). ``make_f`` builds
    another f instead (any network with ``features``, ``forward_with_features`` and
    ``feature_dim``; ``width`` then sizes g only), as chapter 08 runs every method on one backbone.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    f = make_f() if make_f is not None else SimpleConvNet(7, width=width, strides=tuple(f_strides))
    f = f.to(device)
    g = SimpleConvNet(1, width=width, input_pool=g_input_pool).to(device)

    def adam(net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)

    opt_f, opt_g = adam(f), adam(g)
    modules, evaluated = {"f": f, "g": g}, {"f": f, "g": g}
    if method == "vanilla":
        return MethodSetup(
            method,
            independent_step(f, g, opt_f, opt_g, sigma=sigma),
            modules,
            [opt_f, opt_g],
            evaluated,
            sigma=sigma,
        )
    if method == "rebias":
        step = rebias_step(f, g, opt_f, opt_g, lambda_f=lambda_f, lambda_g=lambda_g, sigma=sigma)
        return MethodSetup(method, step, modules, [opt_f, opt_g], evaluated, sigma=sigma)
    if method == "rubi":
        modules["head"] = head = nn.Linear(g.feature_dim, 10).to(device)
        opt_extra = adam(head) if train_extra_layers else None
        step = rubi_step(f, g, head, opt_f, opt_g, opt_extra)
        return MethodSetup(
            method,
            step,
            modules,
            [o for o in (opt_f, opt_g, opt_extra) if o is not None],
            evaluated,
            sigma=sigma,
        )
    modules["gate"] = gate = nn.Linear(f.feature_dim, 1).to(device)
    opt_extra = adam(gate) if train_extra_layers else None
    step = learned_mixin_step(f, g, gate, opt_f, opt_extra, entropy_weight=entropy_weight)
    # g is frozen during the main phase: it gets its own optimiser for pre-training only
    return MethodSetup(
        method,
        step,
        modules,
        [o for o in (opt_f, opt_extra) if o is not None],
        {"f": f},
        pretrain_g=opt_g,
        sigma=sigma,
    )


DEPENDENCE_SAMPLES = 512  # images of the first evaluation split for the per-epoch HSIC diagnostics


def evaluator(
    sets: Mapping[str, TensorData],
    nets: Mapping[str, nn.Module],
    splits: Sequence[str] = ("biased", "unbiased"),
    sigma: Sigma = 1.0,
) -> Callable[[], dict[str, float]]:
    """Per-epoch accuracies of each network on ``sets[split]`` for each split (``<split>_acc`` for
    f, ``g_<split>_acc`` for g) and, when both f and g are evaluated, :func:`dependence_on` on the
    first images of the first split (``<split>_hsic``, ``<split>_hsic_median``,
    ``<split>_f_feat_norm``)."""
    missing = [s for s in splits if s not in sets]
    if missing:
        raise ValueError(f"evaluation splits {missing} are not among the sets {sorted(sets)}")
    probe = sets[splits[0]][torch.arange(min(DEPENDENCE_SAMPLES, len(sets[splits[0]])))]

    def evaluate() -> dict[str, float]:
        out = {
            (f"{split}_acc" if who == "f" else f"{who}_{split}_acc"): accuracy_on(net, sets[split])
            for who, net in nets.items()
            for split in splits
        }
        if "f" in nets and "g" in nets and len(probe) >= 4:
            dep = dependence_on(nets["f"], nets["g"], probe, sigma)
            out.update({f"{splits[0]}_{k}": v for k, v in dep.items()})
        return out

    return evaluate


def train(
    setup: MethodSetup,
    sets: Mapping[str, TensorData],
    *,
    epochs: int,
    batch_size: int,
    lr_step: int,
    seed: int,
    g_pretrain_epochs: int = 0,
    desc: str = "",
    callbacks: Sequence = (),
    progress: bool = True,
    eval_splits: Sequence[str] = ("biased", "unbiased"),
) -> History:
    """Train ``setup`` on ``sets["train"]`` with StepLR(lr_step, 0.1), evaluating on
    ``sets[split]`` for each of ``eval_splits`` after every epoch (pass a validation split to keep
    the test sets for the end).

    LearnedMixin+H first pre-trains g with plain cross-entropy for ``g_pretrain_epochs`` (batch
    order from ``derive_seed(seed, "g", "pretrain")``)."""
    g = setup.modules["g"]
    if setup.pretrain_g is not None and g_pretrain_epochs > 0:
        fit(
            sets["train"],
            supervised_step(g, setup.pretrain_g),
            epochs=g_pretrain_epochs,
            batch_size=batch_size,
            modules=g,
            seed=derive_seed(seed, "g", "pretrain"),
            desc=f"pre-train g {desc}",
        )
    schedulers = [torch.optim.lr_scheduler.StepLR(o, lr_step, 0.1) for o in setup.optimisers]
    # min_batch=4: the unbiased HSIC estimator needs at least 4 samples
    return fit(
        sets["train"],
        setup.step,
        epochs=epochs,
        batch_size=batch_size,
        modules=list(setup.modules.values()),
        seed=seed,
        schedulers=schedulers,
        min_batch=4,
        evaluate=evaluator(sets, setup.evaluated, eval_splits, setup.sigma),
        callbacks=list(callbacks),
        progress=progress,
        desc=desc or setup.method,
    )
