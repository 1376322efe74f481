"""Networks shared by several chapters. Chapter-specific networks live next to their method."""

from __future__ import annotations

import torch
from torch import nn


class LeNet(nn.Module):
    """LeNet-5 style network: two 5×5 conv + max-pool stages, then 120 → 84 → ``num_classes``.

    ``features(x)`` returns the 84-d penultimate representation, which the Fisher chapter concatenates with
    a colour vector.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        spatial = ((image_size // 2) - 4) // 2
        self.head = nn.Sequential(nn.Linear(16 * spatial * spatial, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU())
        self.fc = nn.Linear(84, num_classes)
        self.feature_dim = 84

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class SimpleConvNet(nn.Module):
    """ReBias's SimpleConvNet: four conv-BN-ReLU blocks without pooling, global average pool, linear head.

    ``kernel_size=7`` gives a shape-capable network (receptive field 25×25); ``kernel_size=1`` gives a network
    that sees single pixels only, i.e. a colour classifier. ``width`` scales the channel counts (16, 32, 64,
    128 at width 1) for fast CPU profiles.
    """

    def __init__(self, kernel_size: int = 7, num_classes: int = 10, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        chans = [in_channels] + [max(1, int(round(c * width))) for c in (16, 32, 64, 128)]
        layers = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans[-1], num_classes)
        self.feature_dim = chans[-1]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.body(x)).flatten(1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.fc(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
