"""Every network of the book, one place to find them: LeNet, ReBias's SimpleConvNet, MaskTune's
SmallCNN, …"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards (also on
    error)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class LeNet(nn.Module):
    """LeNet-5 style network: two 5×5 conv + max-pool stages, then 120 → 84 → ``num_classes``.

    ``features(x)`` returns the 84-d penultimate representation, which the Fisher chapter
    concatenates with a colour vector.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 28):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        spatial = ((image_size // 2) - 4) // 2
        self.head = nn.Sequential(
            nn.Linear(16 * spatial * spatial, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU()
        )
        self.fc = nn.Linear(84, num_classes)
        self.feature_dim = 84

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


class SimpleConvNet(nn.Module):
    """ReBias's SimpleConvNet: four conv-BN-ReLU blocks without pooling, global average pool, linear
    head.

    ``kernel_size=7`` gives a shape-capable network (receptive field 25×25); ``kernel_size=1`` gives
    a network that sees single pixels only, i.e. a colour classifier. ``width`` scales the channel
    counts (16, 32, 64, 128 at width 1) for fast CPU profiles. Two further options, both off in the
    paper's network, make CPU profiles cheaper: ``strides`` (e.g. ``(1, 2, 2, 2)`` halves the
    resolution in blocks 2-4, so a 7×7 network still sees the whole digit) and ``input_pool``
    (average-pools the image by that factor first; for the 1×1 network this keeps it colour-only,
    since pooling a flat background leaves its colour unchanged).
    """

    def __init__(
        self,
        kernel_size: int = 7,
        num_classes: int = 10,
        width: float = 1.0,
        in_channels: int = 3,
        strides: tuple[int, ...] = (1, 1, 1, 1),
        input_pool: int = 1,
    ):
        super().__init__()
        strides = tuple(strides)
        if len(strides) != 4 or any(s not in (1, 2) for s in strides):
            raise ValueError(f"strides must be four values in (1, 2), got {strides!r}")
        if not isinstance(input_pool, int) or input_pool < 1:
            raise ValueError(f"input_pool must be an int >= 1, got {input_pool!r}")
        self.input_pool = input_pool
        chans = [in_channels] + [max(1, int(round(c * width))) for c in (16, 32, 64, 128)]
        layers = []
        for c_in, c_out, stride in zip(chans[:-1], chans[1:], strides):
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
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
        if self.input_pool > 1:
            x = F.avg_pool2d(x, self.input_pool)
        return self.pool(self.body(x)).flatten(1)

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.features(x)
        return self.fc(feats), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def _conv(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3), nn.BatchNorm2d(c_out), nn.ReLU()]


class SmallCNN(nn.Module):
    """The SmallCNN of MaskTune's MNIST experiments (official ``src/models/simple_cnn.py``).

    Input 3×28×28, 3×3 convolutions without padding: conv(3→16)-BN-ReLU → conv(16→16)-BN-ReLU →
    max-pool → conv(16→32)-BN-ReLU → conv(32→32)-BN-ReLU → max-pool → flatten (32·4·4 = 512) →
    Linear(512→256)-BN-ReLU → Linear(256→num_classes). The saliency target layer is the last ReLU of
    the convolutional part (``backbone[12]``, output 32×8×8).
    """

    def __init__(self, num_classes: int = 2, in_channels: int = 3):
        super().__init__()
        self.backbone = nn.Sequential(
            *_conv(in_channels, 16),
            *_conv(16, 16),
            nn.MaxPool2d(2),
            *_conv(16, 32),
            *_conv(32, 32),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    @property
    def cam_target_layer(self) -> nn.Module:
        """The last ReLU before the final max-pool (32×8×8), the official ``backbone[-3]``."""
        return self.backbone[-3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class FusionLeNet(nn.Module):
    """The reference's "ModifiedLeNet": LeNet features of the grey image (no padding: 28→24→12→8→4),
    an 84-d vector h, then one linear layer on the concatenation [h ; c] ∈ R^87. Colour reaches the
    logits only as ``W_c c``. No dropout, no BatchNorm."""

    # Trained in channels_last on AVX-512 CPUs: the Fisher step's convolutions (forward, input
    # gradient and its double backward on 1,280 perturbed rows) ran 1.82× faster there in oneDNN's
    # NHWC kernels, against no gain on AVX2 (helpers.device.memory_format).
    cpu_channels_last = True

    def __init__(self, colour_dim: int = 3, num_classes: int = 10):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(1, 6, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
        )
        self.fc_color = nn.Linear(84 + colour_dim, num_classes)

    def forward(self, x: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
        return self.fc_color(torch.cat([self.image(x), colour], dim=1))

    def colour_weights(self) -> torch.Tensor:
        """W_c: the (10, 3) block of the fusion layer that multiplies the colour vector."""
        return self.fc_color.weight[:, -3:]


class MultiTaskEncoder(nn.Module):
    """conv(3→16)-pool-conv(16→32)-pool-conv(32→32) → linear to ``feature_dim`` → ReLU = the
    features; two linear heads (10 digits, 2 background families) used only while training the
    encoder."""

    def __init__(self, feature_dim: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 32, 3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, feature_dim),
            nn.ReLU(),
        )
        self.digit_head = nn.Linear(feature_dim, 10)
        self.family_head = nn.Linear(feature_dim, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.digit_head(h), self.family_head(h)


class Adapter(nn.Module):
    """ERM / bias-amplified adapter: ``tanh(W1 z)`` (128-d) then a linear 2-way classifier."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be >= 1, got dim={dim}, hidden={hidden}")
        self.hidden = nn.Linear(dim, hidden)
        self.out = nn.Linear(hidden, 2)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """L2-normalised hidden features (what stage 2 clusters)."""
        return F.normalize(torch.tanh(self.hidden(z)), dim=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(z)))


class MarginHead(nn.Module):
    """CAML head: ``h = ReLU(W1 z)``; returns ``cos(theta_j) = <h/|h|, W_j/|W_j|>`` for the two
    classes."""

    def __init__(self, dim: int, hidden: int = 128):
        super().__init__()
        if dim < 1 or hidden < 1:
            raise ValueError(f"dim and hidden must be >= 1, got dim={dim}, hidden={hidden}")
        self.hidden = nn.Linear(dim, hidden)
        self.weight = nn.Parameter(torch.empty(2, hidden))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = F.normalize(F.relu(self.hidden(z)), dim=1)
        return h @ F.normalize(self.weight, dim=1).t()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
