"""Typed values passed between pipeline stages (convert -> quantize -> validate -> bundle).

Kept in one small module so every stage agrees on them without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

Target = str  # a registered target's name (mobex.plugins): "tflite", "coreml", "executorch", ...
Platform = str  # "android" | "ios"


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of an int8/uint8 tensor: real = scale * (q - zero_point)."""

    scale: float
    zero_point: int


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output as the exported model sees it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "float16", "int64", "int8", ...
    quantization: QuantParams | None = None

    def to_dict(self) -> dict:
        out: dict = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        if self.quantization is not None:
            out["quantization"] = {
                "scale": self.quantization.scale,
                "zero_point": self.quantization.zero_point,
            }
        return out


@dataclass
class ExportedVariant:
    """One converted (and possibly quantized) model file, ready to validate and maybe ship.

    `path` is a `.tflite` file for TFLite and an `.mlpackage` directory for Core ML.
    """

    target: Target
    platform: Platform
    quantization: str
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    size_bytes: int
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    # How a quantized variant was made (TFLite int8: calibration, fallback, search), shown in the report.
    details: dict | None = None
    # The target's `manifest_extras(path)`, read where the file was made (the export worker, which has the
    # converter loaded), so bundling a cached variant loads no converter. None: ask the target at bundle time.
    manifest_extras: dict | None = None


def path_size(path: Path) -> int:
    """Bytes on disk of a file, or of every file under a directory (an .mlpackage)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file())
