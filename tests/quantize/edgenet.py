"""The CNN and digit splits shared by the Core ML and TFLite calibrated-int8 tests, so both formats are judged on
the same lossy-to-round weights and the same held-out data."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class EdgeNet(nn.Module):
    """Stem conv + ReLU6, depthwise 3x3 edge filters (weights x5..x50, zero sum), 1x1 conv, pooled linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 32, 3, padding=1)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.project = nn.Conv2d(32, 32, 1)
        self.head = nn.Linear(32, 10)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            w = torch.randn(32, 1, 3, 3, generator=g)
            self.dw.weight.copy_(
                (w - w.mean(dim=(2, 3), keepdim=True)) * torch.empty(32, 1, 1, 1).uniform_(5, 50, generator=g)
            )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.clamp(self.stem(image), 0, 6)
        x = torch.relu(self.project(self.dw(x)))
        return self.head(x.mean(dim=(2, 3)))


def edgenet_and_digits() -> tuple[EdgeNet, np.ndarray, list[dict], list[dict]]:
    """Seeded EdgeNet plus digits (0..4: positive, smooth-ish), 64 calibration and 100 held-out validation feeds."""
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    x = (load_digits().images.astype(np.float32) / 4.0)[:, None]
    model = EdgeNet().eval()
    calib = [{"image": x[i : i + 1]} for i in range(0, 64)]
    val = [{"image": x[i : i + 1]} for i in range(1000, 1100)]
    return model, x, calib, val
