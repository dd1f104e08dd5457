"""Detectors: multi-head (scores + boxes + landmarks), anchor-free grid heads with in-graph decoding,
and a fully convolutional face-detector-style net on a 240x320 input. Random-init, judged on scenes
of real scikit-learn digits pasted on a canvas."""

from __future__ import annotations

import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register
from coverage_zoo.audio import randomise_norms

CANVAS = "real digits (scikit-learn) pasted on a dark canvas"
DETECTION_NEEDS = "task = detection: named score and box outputs, matched-box IoU, mAP@0.5 (part 4)"


def conv_bn(cin: int, cout: int, stride: int = 1, act: type[nn.Module] = nn.ReLU, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    layers.append(act(cout) if act is nn.PReLU else act())
    return nn.Sequential(*layers)


class BlazeStyle(nn.Module):
    """BlazeFace-like: a 64x64 face crop -> per-anchor scores, boxes (4) and 5 landmarks (10)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(conv_bn(3, 16, 2), conv_bn(16, 16, 1, groups=16), conv_bn(16, 32, 2),
                                  conv_bn(32, 32, 1, groups=32), conv_bn(32, 48, 2))  # fmt: skip
        anchors = 2
        self.scores, self.boxes = nn.Conv2d(48, anchors, 1), nn.Conv2d(48, anchors * 4, 1)
        self.landmarks = nn.Conv2d(48, anchors * 10, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.body(image)
        b = f.shape[0]
        scores = torch.sigmoid(self.scores(f)).permute(0, 2, 3, 1).reshape(b, -1)
        boxes = self.boxes(f).permute(0, 2, 3, 1).reshape(b, -1, 4)
        marks = self.landmarks(f).permute(0, 2, 3, 1).reshape(b, -1, 10)
        return scores, boxes, marks


class CenterNetStyle(nn.Module):
    """Anchor-free heads: class heatmap (sigmoid), size and offset per grid cell, with a 3x3 max-pool peak map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(conv_bn(3, 16, 2, nn.SiLU), conv_bn(16, 32, 2, nn.SiLU), conv_bn(32, 32, 1, nn.SiLU))
        self.heat, self.size, self.offset = nn.Conv2d(32, 10, 1), nn.Conv2d(32, 2, 1), nn.Conv2d(32, 2, 1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = self.body(image)
        heat = torch.sigmoid(self.heat(f))
        peaks = heat * (nn.functional.max_pool2d(heat, 3, stride=1, padding=1) == heat).to(heat.dtype)
        return peaks, torch.relu(self.size(f)), torch.sigmoid(self.offset(f))


class YoloGridDecode(nn.Module):
    """A YOLO-style grid head decoded in the graph: sigmoid xy + grid offsets, exp wh, objectness x class."""

    def __init__(self, grid: int = 8, classes: int = 10) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(conv_bn(3, 16, 2, nn.LeakyReLU), conv_bn(16, 32, 2, nn.LeakyReLU),
                                  conv_bn(32, 32, 2, nn.LeakyReLU))  # fmt: skip
        self.head = nn.Conv2d(32, 5 + classes, 1)
        ys, xs = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
        self.register_buffer("grid", torch.stack([xs, ys], -1).reshape(1, -1, 2).float())
        self.stride = 64 / grid

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.head(self.body(image)).flatten(2).transpose(1, 2)  # [B, cells, 5 + classes]
        xy = (torch.sigmoid(p[..., :2]) + self.grid) * self.stride
        wh = torch.exp(p[..., 2:4].clamp(max=4)) * self.stride
        boxes = torch.cat([xy - wh / 2, xy + wh / 2], -1)
        scores = torch.sigmoid(p[..., 4:5]) * torch.softmax(p[..., 5:], -1)
        return scores, boxes


class FaceDetectorFCN(nn.Module):
    """UltraFace / RetinaFace-like fully convolutional detector at 240x320 with PReLU, 2 strides of heads."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(conv_bn(3, 16, 2, nn.PReLU), conv_bn(16, 16, 1, nn.PReLU, groups=16),
                                  conv_bn(16, 32, 2, nn.PReLU), conv_bn(32, 32, 1, nn.PReLU, groups=32),
                                  conv_bn(32, 32, 2, nn.PReLU))  # fmt: skip
        self.deep = nn.Sequential(conv_bn(32, 64, 2, nn.PReLU), conv_bn(64, 64, 1, nn.PReLU, groups=64))
        self.heads = nn.ModuleList([nn.Conv2d(32, 2 * 2 + 2 * 4 + 2 * 10, 3, padding=1),
                                    nn.Conv2d(64, 2 * 2 + 2 * 4 + 2 * 10, 3, padding=1)])  # fmt: skip

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f1 = self.stem(image)
        f2 = self.deep(f1)
        outs = []
        for head, f in zip(self.heads, (f1, f2), strict=True):
            outs.append(head(f).permute(0, 2, 3, 1).reshape(image.shape[0], -1, 32))
        p = torch.cat(outs, 1)  # per location: 2 anchors x (2 scores, 4 box, 10 landmarks)
        scores = torch.softmax(p[..., :4].reshape(p.shape[0], -1, 2), -1)
        return scores, p[..., 4:12].reshape(p.shape[0], -1, 4), p[..., 12:].reshape(p.shape[0], -1, 10)


def _entry(name: str, factory: type[nn.Module], shape: tuple[int, int], outputs: tuple[str, ...], covers: tuple,
           fast: bool = False, samples: int = 8) -> None:  # fmt: skip
    register(ZooEntry(
        name=name, family="detection", factory=lambda: randomise_norms(factory()),
        inputs=(Input("image", (1, 3, *shape)),), data=lambda split, n: data.digit_canvas(split, n, *shape),
        outputs=outputs, samples=samples, data_note=CANVAS, covers=covers, needs=DETECTION_NEEDS, fast=fast,
    ))  # fmt: skip


_entry("blaze_multihead", BlazeStyle, (64, 64), ("scores", "boxes", "landmarks"),
       ("multi-head: scores + boxes + landmarks", "depthwise Conv2d", "permute/reshape heads"))  # fmt: skip
_entry("centernet_grid", CenterNetStyle, (64, 64), ("heatmap", "size", "offset"),
       ("anchor-free grid heads", "max-pool peak map (==, cast)", "SiLU"))  # fmt: skip
_entry("yolo_grid_decode", YoloGridDecode, (64, 64), ("scores", "boxes"),
       ("grid decode in graph: meshgrid buffer, sigmoid, exp, clamp", "softmax x objectness", "LeakyReLU"))
_entry("face_fcn_240x320", FaceDetectorFCN, (240, 320), ("scores", "boxes", "landmarks"),
       ("fully convolutional at 240x320", "PReLU per channel after Conv2d", "two-scale heads", "softmax scores"),
       samples=4)  # fmt: skip
