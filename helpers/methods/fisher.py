"""Functional-Fisher-information regulariser per input modality (Gat et al., NeurIPS 2020), as
adapted by SMART-Lab-NYU/BiasMitigation, with the paper-faithful variants as options.

For a batch of B clean pairs (x, c) and n perturbed copies of each (N = B·n rows):

1. ``perturb``: repeat every sample n times and add Gaussian noise, one modality at a time.
   ``noise="knn"`` (reference): row r gets ``σ_r · ε_r`` with σ_r = mean distance to its k nearest
   rows of the *expanded* batch (so the n−1 zero-distance duplicates count). ``noise="batch_std"``
   (Gat et al.): per-feature std over the expanded batch.
2. ``influence_loss``: BCE-with-logits between the clean softmax p (not detached) and the perturbed
   logits z̃. ``influence="reference"`` calls it with input = p and target = z̃, which is linear in
   z̃; ``influence="paper"`` uses input = z̃ and target = p, as the original code.
3. ``functional_fisher``: mean squared input gradient of that loss (``estimation="var"``, Poincaré
   form) or the same divided by the loss (``"ent"``, log-Sobolev form). For images (N, 1, 28, 28)
   the reference's ``norm(dim=1)²`` is the squared gradient *per pixel*, averaged; for colours (N,
   3) it is the squared norm of the 3-vector, averaged over rows.
4. ``regularization_term``: ``max_ent`` = 1/F (maximise information), ``min_ent`` = F,
   ``max_ent_minus`` = −F + 0.1. F is a scalar, so the reference's p-norm is the absolute value.

Loss = CE + λ_image·R(F_image) + λ_colour·R(F_colour).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from helpers.models import eval_mode
from helpers.train import Batch, StepFn

NOISES = ("knn", "batch_std")
INFLUENCES = ("reference", "paper")
ESTIMATIONS = ("var", "ent")
OPTIM_METHODS = ("max_ent", "min_ent", "max_ent_minus")


class FisherConfigError(ValueError):
    """An invalid regulariser option; ``name`` is the offending field (the chapter parameter of that
    name)."""

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(f"{name} {message}")


@dataclass(frozen=True)
class FisherConfig:
    """Everything that defines the regulariser; defaults are the reference's command-line
    defaults."""

    lambda_image: float = 1e-12
    lambda_colour: float = 7e-11
    n_samples: int = 10
    knn_value: int = 219
    noise: str = "knn"
    influence: str = "reference"
    estimation: str = "var"
    optim_method: str = "max_ent"

    def __post_init__(self):
        for name, value, allowed in (
            ("noise", self.noise, NOISES),
            ("influence", self.influence, INFLUENCES),
            ("estimation", self.estimation, ESTIMATIONS),
            ("optim_method", self.optim_method, OPTIM_METHODS),
        ):
            if value not in allowed:
                raise FisherConfigError(name, f"must be one of {list(allowed)}, got {value!r}")
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise FisherConfigError("n_samples", f"must be an int >= 1, got {self.n_samples!r}")
        if not isinstance(self.knn_value, int) or self.knn_value < 1:
            raise FisherConfigError("knn_value", f"must be an int >= 1, got {self.knn_value!r}")
        for name in ("lambda_image", "lambda_colour"):
            if not getattr(self, name) >= 0:
                raise FisherConfigError(name, f"must be >= 0, got {getattr(self, name)!r}")

    @property
    def active(self) -> bool:
        return self.lambda_image > 0 or self.lambda_colour > 0

    def min_batch(self) -> int:
        """Smallest batch for which the k-NN scale exists: k ≤ B·n − 1 rows besides the row
        itself."""
        return math.ceil((self.knn_value + 1) / self.n_samples) if self.noise == "knn" else 2

    def check_batch_size(self, batch_size: int) -> None:
        """Refuse a batch size whose expanded batch has fewer than ``knn_value`` other rows."""
        if self.noise == "knn" and self.knn_value > batch_size * self.n_samples - 1:
            raise FisherConfigError(
                "knn_value",
                f"= {self.knn_value} exceeds batch_size·n_samples − 1 = "
                f"{batch_size * self.n_samples - 1} (batch_size={batch_size}, "
                f"n_samples={self.n_samples})",
            )

    def as_dict(self) -> dict:
        return asdict(self)


# ------------------------------------------------------------------------------------- perturbation
def repeat_rows(t: torch.Tensor, n: int) -> torch.Tensor:
    """Flatten each sample and repeat it n times consecutively: row b·n+s is copy s of sample b."""
    return t.reshape(len(t), -1).repeat_interleave(n, dim=0)


def knn_scale(u: torch.Tensor, k: int) -> torch.Tensor:
    """σ_r = mean of the k smallest distances from row r to the *other* rows of ``u`` (N, d): shape
    (N,). The reference's definition on the expanded batch; :func:`knn_scale_of_copies` computes
    the same from the unique rows."""
    if k > len(u) - 1:
        raise ValueError(f"knn_value={k} exceeds the {len(u) - 1} other rows of the expanded batch")
    d = torch.cdist(u, u)
    d.fill_diagonal_(float("inf"))  # exclude the row itself (the reference uses 1e10)
    return d.topk(k, dim=1, largest=False).values.mean(dim=1)


def knn_scale_of_copies(t: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """:func:`knn_scale` of ``repeat_rows(t, n)``, computed from the B unique rows of ``t``: shape
    (B·n,).

    Row b·n+s of the expanded batch is copy s of sample b, so its nearest rows are the n − 1 other
    copies of b (distance 0), then every other sample b' at distance D[b, b'], each n times. The sum
    of its k smallest distances is therefore n·(d₁ + … + d_q) + r·d_{q+1} with q, r = divmod(k −
    n + 1, n) and d₁ ≤ d₂ ≤ … the sorted row b of D without the diagonal: a (B, B) distance matrix
    instead of a (B·n, B·n) one. The distances are exact differences in float64 (the expanded
    matrix-product form turns the zero distances between copies into rounding noise).
    """
    t = t.reshape(len(t), -1)
    b = len(t)
    if k > b * n - 1:
        raise ValueError(f"knn_value={k} exceeds the {b * n - 1} other rows of the expanded batch")
    q, r = divmod(max(k - (n - 1), 0), n)
    take = q + (r > 0)  # ≤ B − 1 because k ≤ B·n − 1
    if take == 0:  # the k nearest rows are all copies of the row's own sample
        return t.new_zeros(b * n)
    t64 = t.detach().double()
    d = torch.cdist(t64, t64, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    nearest = d.topk(take, dim=1, largest=False).values  # ascending
    weights = torch.full((take,), float(n), dtype=torch.float64, device=t.device)
    if r:
        weights[-1] = r
    return (nearest @ weights / k).to(t.dtype).repeat_interleave(n)


def perturb(t: torch.Tensor, cfg: FisherConfig) -> torch.Tensor:
    """n noisy copies of every sample of ``t`` (B, ...) → (B·n, ...), marked ``requires_grad``."""
    u = repeat_rows(t.detach().float(), cfg.n_samples)
    if cfg.noise == "knn":  # one scalar per row, used for every coordinate
        scale = knn_scale_of_copies(t.detach().float(), cfg.n_samples, cfg.knn_value)[:, None]
    else:
        scale = u.std(dim=0, keepdim=True)  # Gat et al.: per-feature std over the batch
    noisy = u + torch.randn_like(u) * scale
    return noisy.reshape(len(u), *t.shape[1:]).requires_grad_()


# ---------------------------------------------------------------------------------- the information
def influence_loss(p_rep: torch.Tensor, z_tilde: torch.Tensor, influence: str) -> torch.Tensor:
    """BCE-with-logits between repeated clean probabilities and perturbed logits (mean over all
    entries)."""
    if influence == "reference":  # swapped: softplus(p) − p·z̃, linear in z̃
        return F.binary_cross_entropy_with_logits(p_rep, z_tilde)
    return F.binary_cross_entropy_with_logits(z_tilde, p_rep)


def functional_fisher(grad: torch.Tensor, loss: torch.Tensor, estimation: str) -> torch.Tensor:
    """Mean over rows (and pixels) of ``‖grad‖²`` along dim 1; ``ent`` divides by the loss first."""
    sq = grad.norm(p=2, dim=1).pow(2)
    if estimation == "ent":
        sq = sq / loss
    return sq.mean()


def regularization_term(info: torch.Tensor, optim_method: str) -> torch.Tensor:
    """R(F) for one modality's scalar information F."""
    if optim_method == "max_ent":
        return 1.0 / info
    if optim_method == "min_ent":
        return info.abs()
    return -info.abs() + 0.1


def fisher_terms(
    model: nn.Module,
    x: torch.Tensor,
    colour: torch.Tensor,
    logits: torch.Tensor,
    cfg: FisherConfig,
    create_graph: bool = True,
) -> dict[str, torch.Tensor]:
    """F and R per modality for one batch, given the model's clean ``logits`` on it.

    With ``create_graph=True`` the terms are differentiable in the model's parameters (double
    backward).
    """
    x_t, c_t = perturb(x, cfg), perturb(colour, cfg)
    z_t = model(x_t, c_t).float()
    p_rep = F.softmax(logits.float(), dim=1).repeat_interleave(cfg.n_samples, dim=0)
    inf = influence_loss(p_rep, z_t, cfg.influence)
    g_img, g_col = torch.autograd.grad(inf, [x_t, c_t], create_graph=create_graph)
    f_img = functional_fisher(g_img, inf, cfg.estimation)
    f_col = functional_fisher(g_col, inf, cfg.estimation)
    return {
        "fisher_image": f_img,
        "fisher_colour": f_col,
        "reg_image": regularization_term(f_img, cfg.optim_method),
        "reg_colour": regularization_term(f_col, cfg.optim_method),
        "influence_loss": inf,
    }


def regularized_loss(
    model: nn.Module, x: torch.Tensor, colour: torch.Tensor, y: torch.Tensor, cfg: FisherConfig
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """(total loss, clean logits, terms): CE + λ_image·R_image + λ_colour·R_colour; plain CE if both
    λ are 0."""
    logits = model(x, colour)
    loss = F.cross_entropy(logits.float(), y)
    terms: dict[str, torch.Tensor] = {}
    if cfg.active:
        terms = fisher_terms(model, x, colour, logits, cfg)
        if cfg.lambda_image:
            loss = loss + cfg.lambda_image * terms["reg_image"]
        if cfg.lambda_colour:
            loss = loss + cfg.lambda_colour * terms["reg_colour"]
    return loss, logits, terms


class FisherStep:
    """Step function for :func:`helpers.train.fit`: one Adam step on the regularised loss.

    Logged per batch (fit averages them over the epoch): ``loss`` (CE + λ-weighted terms, the
    reference's epoch loss), ``ce``, ``acc`` (clean logits), the information ``fisher_image`` /
    ``fisher_colour`` and the true share ``share_image = F_image / (F_image + F_colour)``.
    ``last_batch()`` returns what the reference logs instead: the unweighted terms R = 1/F of the
    epoch's *last* minibatch and its "proportions" ``prop_image = R_image / (R_image + R_colour)`` —
    which equals F_colour / (F_image + F_colour).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FisherConfig):
        self.model, self.optimizer, self.cfg = model, optimizer, cfg
        self._last: dict[str, torch.Tensor] = {}

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        # The double backward of tiny input gradients runs in float32 even where fit autocasts to
        # bf16.
        with torch.autocast(batch.x.device.type, enabled=False):
            loss, logits, terms = regularized_loss(
                self.model, batch.x, batch.extras["colour"], batch.y, self.cfg
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        out = {"loss": loss.detach(), "acc": (logits.argmax(1) == batch.y).float().mean()}
        if terms:
            f_img, f_col = terms["fisher_image"].detach(), terms["fisher_colour"].detach()
            out.update(
                ce=F.cross_entropy(logits.detach().float(), batch.y),
                fisher_image=f_img,
                fisher_colour=f_col,
                share_image=f_img / (f_img + f_col),
            )
            self._last = {k: terms[k].detach() for k in ("reg_image", "reg_colour")}
        return out

    def last_batch(self) -> dict[str, float]:
        """The reference's logged values for the epoch just finished (empty when the regulariser is
        off)."""
        if not self._last:
            return {}
        r_img = float(self._last["reg_image"]) if self.cfg.lambda_image else 0.0
        r_col = float(self._last["reg_colour"]) if self.cfg.lambda_colour else 0.0
        total = r_img + r_col
        return {
            "logged_prop_image": r_img / total if total > 0 else 0.0,
            "logged_prop_colour": r_col / total if total > 0 else 0.0,
        }


def fisher_step(model: nn.Module, optimizer: torch.optim.Optimizer, cfg: FisherConfig) -> StepFn:
    """A :class:`FisherStep`; with both λ = 0 it is exactly one plain cross-entropy step."""
    return FisherStep(model, optimizer, cfg)


def measure_fisher(
    model: nn.Module, data, cfg: FisherConfig, *, batch_size: int, n_batches: int, seed: int
) -> dict[str, float]:
    """F per modality of a (trained) model on the first ``n_batches`` batches of ``data``, with
    noise drawn from a fixed seed, so that epochs and models are compared on the same perturbed
    inputs. Averages of the per-batch F and of the per-batch share F_image / (F_image +
    F_colour)."""
    state = torch.random.get_rng_state()
    cuda_state = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    torch.manual_seed(seed)
    f_img, f_col, share = [], [], []
    try:
        with (
            eval_mode(model),
            torch.enable_grad(),
            torch.autocast(data.x.device.type, enabled=False),
        ):
            for b in range(n_batches):
                sl = slice(b * batch_size, (b + 1) * batch_size)
                x, c = data.x[sl], data.extras["colour"][sl]
                if len(x) < cfg.min_batch():
                    break
                with torch.no_grad():
                    logits = model(x, c)
                t = fisher_terms(model, x, c, logits, cfg, create_graph=False)
                a, b_ = float(t["fisher_image"]), float(t["fisher_colour"])
                f_img.append(a), f_col.append(b_), share.append(a / (a + b_))
    finally:
        torch.random.set_rng_state(
            state
        )  # measuring must not change the training run's random stream
        if cuda_state is not None:
            torch.cuda.set_rng_state_all(cuda_state)
    if not share:
        raise ValueError(
            f"measure_fisher: no batch of at least {cfg.min_batch()} samples in the data"
        )
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"fisher_image": mean(f_img), "fisher_colour": mean(f_col), "share_image": mean(share)}


class MovingAverageStop:
    """The reference's actual stopping rule: after more than ``patience`` epochs, stop when the
    ``patience``-epoch moving average of the training loss changed by less than ``tol`` from the
    previous epoch's, i.e. |L_t − L_{t−patience}| < patience·tol."""

    def __init__(self, patience: int = 10, tol: float = 1e-3, monitor: str = "loss"):
        self.patience, self.tol, self.monitor = patience, tol, monitor

    def on_epoch_end(self, epoch: int, row: dict, history) -> bool:
        losses = history.column(self.monitor)
        # reference: 0-based epoch >= patience
        if epoch - 1 < self.patience or len(losses) < self.patience + 1:
            return False
        now = sum(losses[-self.patience :]) / self.patience
        before = sum(losses[-self.patience - 1 : -1]) / self.patience
        return abs(now - before) < self.tol


__all__ = [
    "FisherConfig",
    "FisherConfigError",
    "repeat_rows",
    "knn_scale",
    "knn_scale_of_copies",
    "perturb",
    "influence_loss",
    "functional_fisher",
    "regularization_term",
    "fisher_terms",
    "regularized_loss",
    "FisherStep",
    "fisher_step",
    "measure_fisher",
    "MovingAverageStop",
]
