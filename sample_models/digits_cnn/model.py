"""MobileNet-style CNN for 8x8 scikit-learn digits.

Input ``image``: float32 [N, 1, 8, 8], pixel intensity 0..16 divided by 16.
Output ``logits``: float32 [N, 10].

Depthwise-separable blocks (depthwise conv + BN + ReLU6, pointwise conv + BN + ReLU6) and a 1x1 head
conv before the pool are the building blocks of mobile CNNs (MobileNetV1/V2, EfficientNet-Lite), so
this sample exercises the ops that matter on phones. The widths are those of a small real mobile
model (about 460k parameters, most in 1x1 convolutions), far more than 8x8 digits need: at the 9k
parameters of the first version the .tflite header and per-channel scales outweighed the weights, so
int8 could not show what it saves in size and time. ReLU6 rather than Hardswish because XNNPACK has no
int8 HARD_SWISH kernel (an int8 graph with it runs in pieces, slower than fp32). No data-dependent
control flow: the graph exports with torch.export / jit.trace.
"""

from torch import Tensor, nn


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(),
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
        self.stem = _conv_bn_act(1, 32, 3)  # 8x8
        self.blocks = nn.Sequential(
            DepthwiseSeparable(32, 64),  # 8x8
            DepthwiseSeparable(64, 128, stride=2),  # 4x4
            DepthwiseSeparable(128, 256),  # 4x4
            DepthwiseSeparable(256, 256),  # 4x4
        )
        self.head = _conv_bn_act(256, 1280, 1)  # 4x4, EfficientNet-Lite's head width
        self.classifier = nn.Linear(1280, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        x = self.head(self.blocks(self.stem(image)))
        x = x.mean(dim=(2, 3))  # global average pool
        return self.classifier(x)


def build() -> nn.Module:
    """Return the architecture, randomly initialised; trained weights come from weights.safetensors."""
    return DigitsCNN()
