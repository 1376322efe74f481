"""Batched class-activation maps with the ``pytorch-grad-cam`` package (PyPI ``grad-cam`` ≥ 1.5).

MaskTune's official code computes XGradCAM maps with ``grad-cam`` 1.3.7; the ≥ 1.5 API differs in
two ways that matter here: the constructor lost ``use_cuda`` (the device is taken from the model's
parameters) and the call ``cam(input_tensor, targets)`` has no default for ``targets``, so we always
pass it. The library's constructor puts the model in eval mode and registers hooks on the target
layer, and its backward pass overwrites the parameters' ``.grad``; we build the CAM object inside a
``with`` block (the hooks are released on exit), put the model back in the mode it was in and give
the parameters back the gradients they held before.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from helpers.models import eval_mode

CAM_METHODS = ("xgradcam", "gradcam", "gradcam++")


def _cam_class(method: str):
    from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, XGradCAM

    classes = {"xgradcam": XGradCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus}
    if method not in classes:
        raise ValueError(f"method must be one of {list(classes)}, got {method!r}")
    return classes[method]


def saliency_maps(
    model: nn.Module,
    x: torch.Tensor,
    target_layer: nn.Module,
    *,
    method: str = "xgradcam",
    labels: torch.Tensor | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """CAM of every image in ``x`` (N, C, H, W): a float tensor (N, H, W) in [0, 1] on ``x``'s
    device.

    ``labels=None`` explains each image's predicted (argmax) class, as the official MaskTune code
    does; passing the true labels explains the labelled class instead. The maps are computed in eval
    mode (the library forces it) in batches of ``batch_size``; the model's previous train/eval mode
    and its parameters' ``.grad`` are restored.
    """
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cam_cls = _cam_class(method)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if labels is not None and len(labels) != len(x):
        raise ValueError(f"labels has {len(labels)} entries but x has {len(x)} images")
    params = list(model.parameters())
    grads = [p.grad for p in params]
    maps = []
    try:
        with eval_mode(model), cam_cls(model=model, target_layers=[target_layer]) as cam:
            for start in range(0, len(x), batch_size):
                xb = x[start : start + batch_size]
                targets = (
                    None
                    if labels is None
                    else [
                        ClassifierOutputTarget(int(c)) for c in labels[start : start + batch_size]
                    ]
                )
                out = cam(input_tensor=xb, targets=targets)
                maps.append(torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)))
    finally:
        for p, g in zip(params, grads):
            p.grad = g
    if not maps:
        return torch.empty(0, *x.shape[-2:], device=x.device)
    return torch.cat(maps).clamp_(0.0, 1.0).to(x.device)


def patch_share(maps: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per image, the fraction of the saliency mass that falls in the top-left ``patch_size``²
    corner."""
    total = maps.flatten(1).sum(1)
    corner = maps[:, :patch_size, :patch_size].flatten(1).sum(1)
    return torch.where(total > 0, corner / total.clamp_min(1e-12), torch.zeros_like(total))
