"""MobileNet-style CNN for 8x8 scikit-learn digits.

Input ``image``: float32 [N, 1, 8, 8], pixel intensity 0..16 divided by 16.
Output ``logits``: float32 [N, 10].

Depthwise-separable blocks (depthwise conv + BN + Hardswish, pointwise conv + BN + Hardswish) are the
building block of mobile CNNs, so this sample exercises the ops that matter on phones. No
data-dependent control flow: the graph exports with torch.export / jit.trace.
"""

from torch import Tensor, nn


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.Hardswish(),
    )


class DepthwiseSeparable(nn.Module):
    """Depthwise 3x3 (one filter per channel) followed by a pointwise 1x1 mix."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = _conv_bn_act(c_in, c_in, 3, stride=stride, groups=c_in)
        self.pointwise = _conv_bn_act(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


class DigitsCNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = _conv_bn_act(1, 16, 3)  # 8x8
        self.blocks = nn.Sequential(
            DepthwiseSeparable(16, 32),  # 8x8
            DepthwiseSeparable(32, 64, stride=2),  # 4x4
            DepthwiseSeparable(64, 64),  # 4x4
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        x = self.blocks(self.stem(image))
        x = x.mean(dim=(2, 3))  # global average pool
        return self.classifier(x)


def build() -> nn.Module:
    """Return the architecture, randomly initialised; trained weights come from weights.safetensors."""
    return DigitsCNN()
