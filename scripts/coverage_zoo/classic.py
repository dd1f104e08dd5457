"""Classic small nets trained on real data: a MobileNet-style CNN, a ResNet with BatchNorm, an MLP-Mixer,
a tabular regressor and a siamese embedding net."""

from __future__ import annotations

import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register
from coverage_zoo.audio import randomise_norms
from coverage_zoo.detection import conv_bn


class DepthwiseCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(conv_bn(1, 16, 1, nn.ReLU6), conv_bn(16, 16, 1, nn.ReLU6, groups=16),
                                  nn.Conv2d(16, 32, 1), nn.ReLU6(), conv_bn(32, 32, 2, nn.ReLU6, groups=32),
                                  nn.Conv2d(32, 64, 1), nn.ReLU6(), nn.AdaptiveAvgPool2d(1), nn.Flatten())  # fmt: skip
        self.head = nn.Linear(64, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a, self.b = conv_bn(cin, cout, stride), nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout))
        self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(self.a(x)) + self.skip(x))


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(conv_bn(1, 16), BasicBlock(16, 16, 1), BasicBlock(16, 32, 2), BasicBlock(32, 32, 1))
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image).mean((2, 3)))


class Mixer(nn.Module):
    """MLP-Mixer: 2x2 patches, token-mixing and channel-mixing MLPs with LayerNorm and GELU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.patch = nn.Conv2d(1, 32, 2, 2)
        self.blocks = nn.ModuleList()
        for _ in range(2):
            self.blocks.append(nn.ModuleDict({
                "n1": nn.LayerNorm(32), "tok": nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16)),
                "n2": nn.LayerNorm(32), "ch": nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32)),
            }))  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.patch(image).flatten(2).transpose(1, 2)  # [B, 16 tokens, 32]
        for b in self.blocks:
            x = x + b["tok"](b["n1"](x).transpose(1, 2)).transpose(1, 2)
            x = x + b["ch"](b["n2"](x))
        return self.head(x.mean(1))


class SiameseEmbed(nn.Module):
    """Two images through one shared CNN tower: both L2-normalised embeddings and their cosine."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tower = nn.Sequential(conv_bn(1, 16), conv_bn(16, 32, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                   nn.Linear(32, 16))  # fmt: skip

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ea = nn.functional.normalize(self.tower(a), dim=-1)
        eb = nn.functional.normalize(self.tower(b), dim=-1)
        return ea, eb, (ea * eb).sum(-1, keepdim=True)


def _pairs(split: str, n: int) -> dict:
    first, second = data.digits(split, n, name="a"), data.digits("train" if split == "val" else "val", n, name="b")
    return {"a": first["a"], "b": second["b"]}


DIGITS = "real: scikit-learn digits (8x8)"
for name, factory, covers, fast in (
    ("depthwise_cnn", DepthwiseCNN, ("depthwise Conv2d", "ReLU6", "BatchNorm2d", "AdaptiveAvgPool2d"), False),
    ("tiny_resnet", TinyResNet, ("residual adds", "BatchNorm2d", "1x1 projection skip"), False),
    ("mlp_mixer", Mixer, ("patch Conv2d", "token-mixing transposes", "LayerNorm", "GELU"), False),
):
    register(ZooEntry(name=name, family="classic", factory=factory, inputs=(Input("image", (1, 1, 8, 8)),),
                      data=data.digits, task="classification", train_epochs=8, samples=48, data_note=DIGITS,
                      covers=covers, fast=fast))  # fmt: skip
register(ZooEntry(
    name="siamese_embed", family="classic",
    factory=lambda: randomise_norms(SiameseEmbed()),
    inputs=(Input("a", (1, 1, 8, 8)), Input("b", (1, 1, 8, 8))), data=_pairs, outputs=("emb_a", "emb_b", "similarity"),
    samples=24, data_note=DIGITS + " (pairs)", covers=("two inputs", "shared tower", "L2 normalize", "3 outputs"),
    needs="embedding task with several outputs: per-sample cosine / recall@k on emb_a, emb_b; similarity is 1 element "
          "per sample: absolute error, not cosine (part 4)",
))  # fmt: skip
register(ZooEntry(
    name="tabular_regressor", family="classic",
    factory=lambda: nn.Sequential(nn.Linear(10, 32), nn.Softplus(), nn.Linear(32, 16), nn.ELU(), nn.Linear(16, 1)),
    inputs=(Input("features", (1, 10)),), data=data.diabetes, task="regression", train_epochs=20, samples=48,
    data_note="real: scikit-learn diabetes", covers=("Softplus", "ELU", "regression, 1 output"),
    needs="1-element output per sample: absolute/relative error against the output range, not cosine (part 4)",
))  # fmt: skip
