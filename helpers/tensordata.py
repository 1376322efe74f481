"""A labelled image set held as tensors: the one dataset type the training loop consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from helpers.seed import generator


@dataclass
class TensorData:
    """Images ``x`` (N, C, H, W) float, targets ``y`` (N,) long, optional bias labels ``bias`` (N,)
    long.

    ``extras`` holds further per-sample tensors a method needs (a colour vector, a second view,
    sample weights); every tensor is indexed together, so ``data[idx]`` keeps them aligned.
    """

    x: torch.Tensor
    y: torch.Tensor
    bias: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.x)
        for name, t in self._tensors().items():
            if len(t) != n:
                raise ValueError(f"TensorData: {name} has {len(t)} rows but x has {n}")

    def _tensors(self) -> dict[str, torch.Tensor]:
        out = {"x": self.x, "y": self.y}
        if self.bias is not None:
            out["bias"] = self.bias
        out.update({f"extras[{k!r}]": v for k, v in self.extras.items()})
        return out

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> TensorData:
        return TensorData(
            self.x[idx],
            self.y[idx],
            None if self.bias is None else self.bias[idx],
            {k: v[idx] for k, v in self.extras.items()},
        )

    def to(
        self, device, memory_format: torch.memory_format = torch.contiguous_format
    ) -> TensorData:
        """Copy to ``device``; images in ``memory_format`` (channels_last on CUDA)."""
        x = self.x.to(device)
        if x.dim() == 4:
            x = x.contiguous(memory_format=memory_format)
        return TensorData(
            x,
            self.y.to(device),
            None if self.bias is None else self.bias.to(device),
            {k: v.to(device) for k, v in self.extras.items()},
        )

    @property
    def device(self) -> torch.device:
        return self.x.device


def random_subset(
    n: int, size: int | None, seed: int, name: str = "size", minimum: int = 10
) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``size`` out of ``n`` rows (all rows when
    ``size`` is None or at least ``n``); ``minimum`` (default: one image per class of a 10-class
    set) names ``name`` when violated."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < minimum:
        raise ValueError(f"{name} must be None (all images) or at least {minimum}, got {size}")
    return torch.randperm(n, generator=generator(seed))[:size].sort().values


__all__ = ["TensorData", "random_subset"]
