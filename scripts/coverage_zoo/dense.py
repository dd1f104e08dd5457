"""Segmentation and dense nets: U-Net skips, bilinear (both align_corners) and nearest upsampling,
ConvTranspose2d, pixel shuffle, dilated convs. Random-init, judged on real digits (scikit-learn)."""

from __future__ import annotations

import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register
from coverage_zoo.audio import randomise_norms
from coverage_zoo.detection import conv_bn

SEG_NEEDS = "task = segmentation: pixel agreement and mIoU against the original (part 4)"


class UNet(nn.Module):
    """Two-level U-Net with concatenated skips; the decoder upsamples with `up` ("bilinear-ac", ...)."""

    def __init__(self, up: str, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = up
        self.e1, self.e2, self.e3 = conv_bn(3, 16), conv_bn(16, 32, 2), conv_bn(32, 64, 2)
        self.d2, self.d1 = conv_bn(64 + 32, 32), conv_bn(32 + 16, 16)
        self.t2 = nn.ConvTranspose2d(64, 64, 2, stride=2) if up == "transpose" else None
        self.t1 = nn.ConvTranspose2d(32, 32, 2, stride=2) if up == "transpose" else None
        self.out = nn.Conv2d(16, classes, 1)

    def _up(self, x: torch.Tensor, conv: nn.Module | None) -> torch.Tensor:
        if self.up == "transpose":
            return conv(x)
        if self.up.startswith("bilinear"):
            return nn.functional.interpolate(x, scale_factor=2, mode="bilinear", align_corners=self.up.endswith("-ac"))
        return nn.functional.interpolate(x, scale_factor=2, mode=self.up)  # nearest / nearest-exact

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        s1 = self.e1(image)
        s2 = self.e2(s1)
        x = self.e3(s2)
        x = self.d2(torch.cat([self._up(x, self.t2), s2], 1))
        x = self.d1(torch.cat([self._up(x, self.t1), s1], 1))
        return self.out(x)


class ESPCN(nn.Module):
    """Super-resolution x2 with PixelShuffle (and PixelUnshuffle on the way in)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.PixelUnshuffle(2), nn.Conv2d(4, 32, 3, padding=1), nn.Tanh(),
                                  nn.Conv2d(32, 16, 3, padding=1), nn.Tanh(), nn.Conv2d(16, 16, 3, padding=1),
                                  nn.PixelShuffle(4))  # fmt: skip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class DilatedDepth(nn.Module):
    """DeepLab-ish: dilated 3x3 branches (ASPP), a global-pool branch broadcast back, bilinear to full size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(conv_bn(3, 16, 2), conv_bn(16, 32, 2))
        self.branches = nn.ModuleList([nn.Conv2d(32, 16, 3, padding=d, dilation=d) for d in (1, 2, 4)])
        self.pool = nn.Conv2d(32, 16, 1)
        self.out = nn.Conv2d(64, 1, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        f = self.stem(image)
        g = self.pool(f.mean((2, 3), keepdim=True)).expand(-1, -1, f.shape[2], f.shape[3])
        y = self.out(torch.relu(torch.cat([b(f) for b in self.branches] + [g], 1)))
        return nn.functional.interpolate(y, size=image.shape[2:], mode="bilinear", align_corners=False)


def _entry(name: str, factory, covers: tuple, size: int = 32, channels: int = 3, fast: bool = False,  # noqa: ANN001
           needs: str = SEG_NEEDS) -> None:  # fmt: skip
    register(ZooEntry(
        name=name, family="dense", factory=lambda: randomise_norms(factory()),
        inputs=(Input("image", (1, channels, size, size)),),
        data=lambda split, n: data.digits(split, n, size=size, channels=channels), samples=12,
        data_note=f"real: scikit-learn digits upscaled to {size}x{size}", covers=covers, needs=needs, fast=fast,
    ))  # fmt: skip


_entry("unet_bilinear_ac", lambda: UNet("bilinear-ac"), ("U-Net skips (concat)", "bilinear align_corners=True"))
_entry("unet_bilinear", lambda: UNet("bilinear"), ("U-Net skips", "bilinear align_corners=False"))
_entry("unet_nearest", lambda: UNet("nearest"), ("U-Net skips", "nearest upsampling"))
_entry("unet_nearest_exact", lambda: UNet("nearest-exact"), ("U-Net skips", "nearest-exact upsampling"))
_entry("unet_convtranspose", lambda: UNet("transpose"), ("U-Net skips", "ConvTranspose2d stride 2"))
_entry("espcn_pixelshuffle", ESPCN, ("PixelUnshuffle", "PixelShuffle x4", "Tanh"), channels=1,
       needs="image output: PSNR against the original would be the task metric (tensor parity meanwhile)")  # fmt: skip
_entry("aspp_depth", DilatedDepth, ("dilated Conv2d (ASPP)", "global-pool branch expand", "bilinear to input size"),
       needs="dense regression (depth): tensor parity is the right check")  # fmt: skip
