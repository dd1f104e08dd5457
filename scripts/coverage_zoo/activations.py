"""Activations, each in a small model trained on real data: PReLU (after Conv2d, Linear, Conv1d),
LeakyReLU, hardswish / hardsigmoid, SiLU, GELU (erf and tanh), Mish."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register

DIGITS = "real: scikit-learn digits (8x8)"


class PReLUConv(nn.Module):
    """Conv2d + per-channel PReLU (the face-detector pattern), on digits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.PReLU(16),
                                  nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.PReLU(32),
                                  nn.Conv2d(32, 32, 3, padding=1), nn.PReLU(32))  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).mean((2, 3)))


class MLP(nn.Module):
    """features -> hidden -> hidden -> outputs, with the given activation module after each hidden layer."""

    def __init__(self, width: int, out: int, act: Callable[[int], nn.Module], hidden: int = 64) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(width, hidden), act(hidden), nn.Linear(hidden, hidden), act(hidden),
                                 nn.Linear(hidden, out))  # fmt: skip

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class PReLUConv1d(nn.Module):
    """Conv1d + per-channel PReLU on a rank-3 tensor (digit rows as 8 channels x 8 steps)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv1d(8, 24, 3, padding=1), nn.PReLU(24), nn.Conv1d(24, 24, 3, padding=1),
                                  nn.PReLU(24))  # fmt: skip
        self.head = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(-1))


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(channels, channels // 4, 1), nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class MobileNetV3Block(nn.Module):
    """MobileNetV3-style: hardswish, depthwise conv, squeeze-excite with hardsigmoid, on 16x16 digits."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.Hardswish(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.Hardswish(), SqueezeExcite(16),
            nn.Conv2d(16, 32, 1), nn.BatchNorm2d(32), nn.Hardswish(),
        )  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).mean((2, 3)))


class MishCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Mish(), nn.Conv2d(16, 32, 3, stride=2, padding=1),
                                  nn.Mish())  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).mean((2, 3)))


def _act(module: type[nn.Module], **kwargs: object) -> Callable[[int], nn.Module]:
    return lambda _width: module(**kwargs)


def _classifier(name: str, factory: Callable, inputs: tuple, dataset: Callable, note: str, covers: tuple,
                epochs: int = 8, fast: bool = False, task: str = "classification",
                samples: int = 48) -> None:  # fmt: skip
    register(ZooEntry(name=name, family="activation", factory=factory, inputs=inputs, data=dataset, task=task,
                      train_epochs=epochs, samples=samples, data_note=note, covers=covers, fast=fast))  # fmt: skip


_classifier("prelu_conv2d", PReLUConv, (Input("image", (1, 1, 8, 8)),), data.digits, DIGITS,
            ("PReLU per channel after Conv2d",))  # fmt: skip
_classifier("prelu_linear", lambda: MLP(30, 2, nn.PReLU), (Input("features", (1, 30)),), data.breast_cancer,
            "real: scikit-learn breast_cancer (30 features)", ("PReLU per channel after Linear (rank 2)",))  # fmt: skip
_classifier("prelu_conv1d", PReLUConv1d, (Input("x", (1, 8, 8)),), data.digit_rows, DIGITS + " as 8x8 rows",
            ("PReLU per channel after Conv1d (rank 3)",))  # fmt: skip
_classifier("leakyrelu_mlp", lambda: MLP(13, 3, _act(nn.LeakyReLU, negative_slope=0.1)), (Input("features", (1, 13)),),
            data.wine, "real: scikit-learn wine (13 features)", ("LeakyReLU",))  # fmt: skip
_classifier("silu_mlp", lambda: MLP(4, 3, _act(nn.SiLU)), (Input("features", (1, 4)),), data.iris,
            "real: scikit-learn iris", ("SiLU",), epochs=30)  # fmt: skip
_classifier("gelu_erf_mlp", lambda: MLP(30, 2, _act(nn.GELU)), (Input("features", (1, 30)),), data.breast_cancer,
            "real: scikit-learn breast_cancer", ("GELU (erf)",))  # fmt: skip
_classifier("gelu_tanh_regressor", lambda: MLP(10, 1, _act(nn.GELU, approximate="tanh")), (Input("features", (1, 10)),),
            data.diabetes, "real: scikit-learn diabetes (regression)", ("GELU (tanh)", "regression"), epochs=20,
            task="regression")  # fmt: skip
_classifier("hardswish_se_cnn", MobileNetV3Block, (Input("image", (1, 1, 16, 16)),),
            lambda split, n: data.digits(split, n, size=16), DIGITS + " upscaled to 16x16",
            ("hardswish", "hardsigmoid (squeeze-excite)", "depthwise Conv2d", "BatchNorm2d"))  # fmt: skip
_classifier("mish_cnn", MishCNN, (Input("image", (1, 1, 8, 8)),), data.digits, DIGITS, ("Mish",))
