"""The SmallCNN of MaskTune's MNIST experiments (official ``src/models/simple_cnn.py``).

Input 3×28×28, 3×3 convolutions without padding:
conv(3→16)-BN-ReLU → conv(16→16)-BN-ReLU → max-pool → conv(16→32)-BN-ReLU → conv(32→32)-BN-ReLU → max-pool
→ flatten (32·4·4 = 512) → Linear(512→256)-BN-ReLU → Linear(256→num_classes).
The saliency target layer is the last ReLU of the convolutional part (``backbone[12]``, output 32×8×8).
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 2, in_channels: int = 3):
        super().__init__()
        self.backbone = nn.Sequential(
            *_conv(in_channels, 16), *_conv(16, 16), nn.MaxPool2d(2),
            *_conv(16, 32), *_conv(32, 32), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, num_classes))

    @property
    def cam_target_layer(self) -> nn.Module:
        """The last ReLU before the final max-pool (32×8×8), the official ``backbone[-3]``."""
        return self.backbone[-3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
