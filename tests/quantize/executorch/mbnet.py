"""A small mobile CNN with the structure of EfficientNet-Lite (BN, ReLU6, inverted residuals with a skip add),
and digit feeds for it, shared by the ExecuTorch int8 tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from tests.conftest import SAMPLES


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """BatchNorm with statistics far from the identity (seeded), so folding and equalization do real work."""
    bn = nn.BatchNorm2d(channels)
    stats = torch.rand(4, channels)
    bn.running_mean.copy_(stats[0] - 0.5)
    bn.running_var.copy_(0.2 + 3.8 * stats[1])
    bn.weight.data.copy_(0.2 + 2.8 * stats[2])
    bn.bias.data.copy_(stats[3] - 0.5)
    return bn


def _conv_bn(c_in: int, c_out: int, kernel: int, groups: int = 1, relu6: bool = True) -> nn.Sequential:
    conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False)
    layers: list[nn.Module] = [conv, _batch_norm(c_out)]
    return nn.Sequential(*layers, nn.ReLU6()) if relu6 else nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, expand: int = 4) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = _conv_bn(c_in, mid, 1)
        self.depthwise = _conv_bn(mid, mid, 3, groups=mid)
        self.project = _conv_bn(mid, c_out, 1, relu6=False)
        self.skip = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.depthwise(self.expand(x)))
        return x + y if self.skip else y


class MiniMBNet(nn.Module):
    """stem conv -> two inverted residuals (the second with a skip add) -> 1x1 head conv -> mean -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = _conv_bn(1, 16, 3)
        self.blocks = nn.Sequential(InvertedResidual(16, 24), InvertedResidual(24, 24))
        self.head = _conv_bn(24, 64, 1)
        self.classifier = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(image)))
        return self.classifier(x.mean(dim=(2, 3)))


def mbnet() -> MiniMBNet:
    """Seeded weights and BatchNorm statistics."""
    torch.manual_seed(0)
    return MiniMBNet().eval()


def digit_feeds(split: str = "calib", count: int = 64) -> list[dict[str, np.ndarray]]:
    """`count` digits_cnn samples of a split, one per feed (input `image`, [1, 1, 8, 8], 0..1)."""
    images = np.load(SAMPLES / "digits_cnn" / "data" / f"{split}.npz")["image"].astype(np.float32)
    return [{"image": images[i : i + 1]} for i in range(min(count, len(images)))]
