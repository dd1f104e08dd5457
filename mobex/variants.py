"""The variant names a recipe may ask for, per target, and the family each belongs to.

Kept free of heavy imports: the recipe validates names before any converter is loaded.
The family decides the default gates (fp32 tight, fp16 looser, int8/int4 on agreement).
"""

from __future__ import annotations

import re

TFLITE_VARIANTS: tuple[str, ...] = ("fp32", "fp16", "dynamic-int8", "int8-weights", "int4-weights", "int8")
COREML_FIXED_VARIANTS: tuple[str, ...] = ("fp32", "fp16", "int8-weights", "int4-weights", "w8a8")
COREML_PATTERNS: tuple[str, ...] = ("palettize-<2|4|6|8>bit", "sparse-<1..99>")

_PALETTIZE = re.compile(r"^palettize-(2|4|6|8)bit$")
_SPARSE = re.compile(r"^sparse-(\d{1,2})$", re.ASCII)

IOS_TARGETS: tuple[str, ...] = ("iOS15", "iOS16", "iOS17", "iOS18")


def is_tflite_variant(name: str) -> bool:
    return name in TFLITE_VARIANTS


def is_coreml_variant(name: str) -> bool:
    if name in COREML_FIXED_VARIANTS or _PALETTIZE.fullmatch(name):
        return True
    match = _SPARSE.fullmatch(name)
    return bool(match) and 1 <= int(match.group(1)) <= 99


def family(variant: str) -> str:
    """Gate family of a variant: fp32, fp16, int8 (8-bit kinds) or low-bit (4-bit and below, sparse)."""
    if variant == "fp32":
        return "fp32"
    if variant == "fp16":
        return "fp16"
    if variant in ("dynamic-int8", "int8-weights", "int8", "w8a8") or variant == "palettize-8bit":
        return "int8"
    return "low-bit"


def ios_target_at_least(target: str, minimum: str) -> bool:
    """True when `target` (e.g. "iOS16") is the same as or newer than `minimum`."""
    return IOS_TARGETS.index(target) >= IOS_TARGETS.index(minimum)


def requires_ios(variant: str) -> str | None:
    """The lowest iOS target a Core ML variant can run on, or None when iOS15 is enough.

    Compressed weights (constexpr ops) need iOS16; activation quantize/dequantize ops (w8a8) need
    iOS17; per-block int4 needs iOS18.
    """
    if variant == "int4-weights":
        return "iOS18"
    if variant == "w8a8":
        return "iOS17"
    if variant in ("fp32", "fp16"):
        return None
    return "iOS16"
