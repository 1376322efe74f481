"""FGSM and CW-L2 through the Adversarial Robustness Toolbox (ART), for models on [-1, 1] images.

The attacks come from a maintained library rather than being written by hand: ART's
``FastGradientMethod`` (L∞, one signed-gradient step) and ``CarliniL2Method`` (untargeted CW-L2).
The book's models read images in [-1, 1]; the attacks here work in pixel units [0, 1] (as in the
reference, whose MNIST lies in [0, 1]), so ε is a fraction of the full grey range and the
adversarial images are clipped to the valid range. Inputs and outputs of these functions are [-1, 1]
tensors on the caller's device. The model's train/eval mode is restored afterwards, and the model
stays on its device (ART itself runs on CPU or CUDA; a model on another device is attacked through a
CPU copy).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from helpers.models import eval_mode


class _UnitInput(nn.Module):
    """Wrap a [-1, 1]-input model as a [0, 1]-input model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * 2.0 - 1.0)


def _classifier(model: nn.Module, x: torch.Tensor, num_classes: int):
    from art.estimators.classification import PyTorchClassifier

    dev = next(model.parameters()).device
    if dev.type not in ("cpu", "cuda"):
        # ART runs on CPU or CUDA only and moves the model it wraps onto its device: attack a CPU
        # copy (e.g. for MPS) so that the caller's model stays where it is.
        model = copy.deepcopy(model).cpu()
    return PyTorchClassifier(
        model=_UnitInput(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=num_classes,
        clip_values=(0.0, 1.0),
        device_type="gpu" if dev.type == "cuda" else "cpu",
    )


def _check(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.dim() != 4 or len(x) != len(y):
        raise ValueError(
            f"x must be (N, C, H, W) with N = len(y), got {tuple(x.shape)} and {len(y)} labels"
        )


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    *,
    batch_size: int = 256,
    num_classes: int = 10,
    keep_misclassified: bool = True,
) -> torch.Tensor:
    """FGSM images x_adv = clip(x + ε·sign(∇ₓCE)) with ε in [0, 1] pixel units; returns [-1, 1]
    images.

    ``keep_misclassified`` keeps images the model already gets wrong unchanged, as the reference
    does.
    """
    from art.attacks.evasion import FastGradientMethod

    _check(x, y)
    if not 0.0 <= eps <= 1.0:
        raise ValueError(f"eps must be in [0, 1] (pixel units), got {eps}")
    if eps == 0:
        return x.clone()
    dev = x.device
    with eval_mode(model):
        clf = _classifier(model, x, num_classes)
        x01 = ((x.detach().float() + 1.0) / 2.0).cpu().numpy()
        attack = FastGradientMethod(clf, norm=np.inf, eps=float(eps), batch_size=batch_size)
        adv = attack.generate(x=x01, y=y.cpu().numpy())
        out = torch.from_numpy(adv).to(dev) * 2.0 - 1.0
        if keep_misclassified:
            wrong = _predict_labels(model, x) != y
            out[wrong] = x[wrong].float()
    return out.to(x.dtype)


def cw_l2(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_iter: int = 10,
    binary_search_steps: int = 3,
    initial_const: float = 0.1,
    learning_rate: float = 0.01,
    confidence: float = 0.0,
    batch_size: int = 64,
    num_classes: int = 10,
) -> torch.Tensor:
    """Untargeted Carlini–Wagner L2 attack (ART); returns [-1, 1] images."""
    from art.attacks.evasion import CarliniL2Method

    _check(x, y)
    for name, value in (("max_iter", max_iter), ("binary_search_steps", binary_search_steps)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if initial_const <= 0:
        raise ValueError(f"initial_const must be > 0, got {initial_const}")
    dev = x.device
    with eval_mode(model):
        clf = _classifier(model, x, num_classes)
        x01 = ((x.detach().float() + 1.0) / 2.0).cpu().numpy()
        attack = CarliniL2Method(
            clf,
            confidence=confidence,
            targeted=False,
            learning_rate=learning_rate,
            binary_search_steps=binary_search_steps,
            max_iter=max_iter,
            initial_const=initial_const,
            batch_size=batch_size,
            verbose=False,
        )
        adv = attack.generate(x=x01, y=y.cpu().numpy())
    return (torch.from_numpy(adv).to(dev) * 2.0 - 1.0).to(x.dtype)


@torch.no_grad()
def _predict_labels(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    return torch.cat(
        [model(x[i : i + batch_size].float()).argmax(1) for i in range(0, len(x), batch_size)]
    )


def accuracy_under_attack(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_adv: torch.Tensor
) -> float:
    """Fraction of images still classified correctly after the attack (correct after attack /
    total)."""
    with eval_mode(model):
        return float((_predict_labels(model, x_adv) == y).float().mean())


def l2_distance(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per-image L2 distance in [0, 1] pixel units."""
    return ((x_adv.float() - x.float()) / 2.0).flatten(1).norm(dim=1)
