"""Tiny Vision Transformer for 8x8 scikit-learn digits.

Input ``image``: float32 [N, 1, 8, 8], pixel intensity 0..16 divided by 16.
Output ``logits``: float32 [N, 10].

Attention is written out (Linear q/k/v, matmul, softmax) rather than with nn.MultiheadAttention, so
that both the TFLite and the Core ML converters see plain ops. No data-dependent control flow, and no
Python ints taken from tensor shapes (coremltools 9's TorchScript frontend fails on the ``aten::Int``
that tracing records for them with torch 2.13), so jit.trace and torch.export both convert.
"""

import torch
from torch import Tensor, nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: Tensor) -> Tensor:
        return x.unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)  # [B, H, N, Dh]

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * self.scale, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).flatten(2)  # [B, N, D]
        return self.proj(out)


class Block(nn.Module):
    """Pre-LayerNorm transformer encoder block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class DigitsViT(nn.Module):
    def __init__(
        self, num_classes: int = 10, dim: int = 48, depth: int = 2, heads: int = 4, mlp_ratio: int = 2
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=2, stride=2)  # 8x8 -> 4x4 = 16 patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 17, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, image: Tensor) -> Tensor:
        x = self.patch_embed(image).flatten(2).transpose(1, 2)  # [B, 16, D]
        cls = self.cls_token + torch.zeros_like(x[:, :1])  # broadcast to [B, 1, D] without reading x.shape
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build() -> nn.Module:
    """Return the architecture, randomly initialised; trained weights come from weights.safetensors."""
    return DigitsViT()
