"""A labelled image set held as tensors: the one dataset type the training loop consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch


@dataclass
class TensorData:
    """Images ``x`` (N, C, H, W) float, targets ``y`` (N,) long, optional bias labels ``bias`` (N,) long.

    ``extras`` holds further per-sample tensors a method needs (a colour vector, a second view, sample
    weights); every tensor is indexed together, so ``data[idx]`` keeps them aligned.
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

    def __getitem__(self, idx) -> "TensorData":
        return TensorData(
            self.x[idx],
            self.y[idx],
            None if self.bias is None else self.bias[idx],
            {k: v[idx] for k, v in self.extras.items()},
        )

    def to(self, device, memory_format: torch.memory_format = torch.contiguous_format) -> "TensorData":
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

    def with_extras(self, **extras: torch.Tensor) -> "TensorData":
        return replace(self, extras={**self.extras, **extras})


def concat(parts: list[TensorData]) -> TensorData:
    """Concatenate sets that carry the same fields."""
    if not parts:
        raise ValueError("concat needs at least one TensorData")
    has_bias = {p.bias is not None for p in parts}
    if len(has_bias) != 1:
        raise ValueError("concat: either all parts carry bias labels or none does")
    keys = {tuple(sorted(p.extras)) for p in parts}
    if len(keys) != 1:
        raise ValueError("concat: parts carry different extras")
    return TensorData(
        torch.cat([p.x for p in parts]),
        torch.cat([p.y for p in parts]),
        torch.cat([p.bias for p in parts]) if parts[0].bias is not None else None,
        {k: torch.cat([p.extras[k] for p in parts]) for k in parts[0].extras},
    )


__all__ = ["TensorData", "concat"]
