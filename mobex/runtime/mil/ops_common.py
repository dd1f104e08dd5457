"""Kernel registry and the helpers every op family shares.

A kernel is `fn(a, info) -> array | tuple[array, ...]`: `a` maps the op's input names to values
(numpy arrays, numpy scalars, Python strings, or lists of those for tuple inputs), `info` carries
what is static about the op (name, declared output shapes and dtypes, opset). An optional `prepare`
hook runs once at load on the op's constant inputs, so per-call work (e.g. turning a weight into a
torch tensor) is not repeated on every `run`.

Values of fp16 variables are kept in float32 arrays holding fp16-representable numbers: kernels
compute in float32, and the interpreter rounds each fp16 output back to fp16. That keeps kernels
dtype-agnostic while the numbers follow what the converted program computes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from mobex.errors import MobexError

Args = dict[str, Any]
Kernel = Callable[[Args, "OpInfo"], Any]
Prepare = Callable[[Args, "OpInfo"], Args]

# MIL dtype name -> numpy dtype of the array the interpreter keeps for it.
CONTAINER_DTYPES: dict[str, np.dtype] = {
    "fp16": np.dtype(np.float32),
    "fp32": np.dtype(np.float32),
    "fp64": np.dtype(np.float64),
    "bool": np.dtype(np.bool_),
    "int4": np.dtype(np.int8),
    "int8": np.dtype(np.int8),
    "int16": np.dtype(np.int16),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "uint1": np.dtype(np.uint8),
    "uint2": np.dtype(np.uint8),
    "uint3": np.dtype(np.uint8),
    "uint4": np.dtype(np.uint8),
    "uint6": np.dtype(np.uint8),
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype(np.uint16),
    "uint32": np.dtype(np.uint32),
    "uint64": np.dtype(np.uint64),
}

# MIL dtype name -> numpy dtype a caller sees at the program boundary.
BOUNDARY_DTYPES: dict[str, np.dtype] = {**CONTAINER_DTYPES, "fp16": np.dtype(np.float16)}


@dataclass(frozen=True)
class OpInfo:
    """What is known about one op before it runs."""

    name: str
    op_type: str
    out_shapes: tuple[tuple[int | None, ...] | None, ...]  # None for an unknown dim or rank
    out_dtypes: tuple[str, ...]  # MIL dtype names ("fp16", "int32", ...)
    opset: int  # spec version of the function's opset (6 = iOS15, 7 = iOS16, 8 = iOS17, 9 = iOS18)

    @property
    def out_shape(self) -> tuple[int | None, ...] | None:
        return self.out_shapes[0] if self.out_shapes else None


@dataclass(frozen=True)
class KernelEntry:
    fn: Kernel
    prepare: Prepare | None
    exact: bool  # output is exactly representable in the input's precision: no fp16 rounding needed
    takes_blocks: bool = False  # control flow: called as fn(a, info, blocks) to run its nested blocks
    foldable: bool = True  # False: never evaluated at load even when every input is constant (random ops)


KERNELS: dict[str, KernelEntry] = {}


def register(
    *op_types: str,
    prepare: Prepare | None = None,
    exact: bool = False,
    takes_blocks: bool = False,
    foldable: bool = True,
):
    """Register `fn` as the kernel of each op type in `op_types`."""

    def deco(fn: Kernel) -> Kernel:
        for name in op_types:
            KERNELS[name] = KernelEntry(fn, prepare, exact, takes_blocks, foldable)
        return fn

    return deco


class OpaqueValue:
    """A runtime value that is not a tensor (a make_list list, a state buffer): kernels pass it on as is."""


# --------------------------------------------------------------------------- helpers


def f32(x: Any) -> np.ndarray:
    """Any numeric value as a float32 array (no copy when it already is one)."""
    return np.asarray(x, dtype=np.float32)


def ival(x: Any) -> int:
    """A scalar or 1-element array as a Python int."""
    return int(np.asarray(x).reshape(-1)[0]) if np.ndim(x) else int(x)


def ilist(x: Any) -> list[int]:
    """An int tensor (or scalar) as a Python list of ints."""
    return [int(v) for v in np.asarray(x).reshape(-1)]


def bval(x: Any) -> bool:
    return bool(np.asarray(x).reshape(-1)[0]) if np.ndim(x) else bool(x)


def sval(x: Any) -> str:
    """A const string input (pymil hands them over as str or a 0-d array)."""
    return x if isinstance(x, str) else str(np.asarray(x).reshape(-1)[0])


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def to_torch(x: np.ndarray):
    """A numpy array as a torch tensor, sharing memory when the layout allows it."""
    import torch

    arr = np.asarray(x)
    if not arr.flags.c_contiguous and any(s < 0 for s in arr.strides):
        arr = np.ascontiguousarray(arr)
    return torch.from_numpy(arr)


def round_fp16(x: np.ndarray) -> np.ndarray:
    """Round float values to the nearest fp16 value, kept in a float32 array.

    torch's half conversion is vectorised and ~4x faster than numpy's on large tensors.
    """
    arr = np.asarray(x, dtype=np.float32)
    if arr.size < 4096:
        return arr.astype(np.float16).astype(np.float32)
    import torch

    return to_torch(arr).to(torch.float16).to(torch.float32).numpy()


def spatial_pads(
    pad_type: str,
    in_spatial: tuple[int, ...],
    kernel: tuple[int, ...],
    strides: tuple[int, ...],
    dilations: tuple[int, ...],
    custom: list[int] | None,
) -> list[tuple[int, int]]:
    """(before, after) padding per spatial dim, as coremltools defines pad_type (`_utils.aggregated_pad`)."""
    n = len(kernel)
    if pad_type == "valid":
        return [(0, 0)] * n
    if pad_type == "custom":
        pads = list(custom or [0] * 2 * n)
        return [(int(pads[2 * i]), int(pads[2 * i + 1])) for i in range(n)]
    if pad_type in ("same", "same_lower"):
        out = []
        for i, k, s, d in zip(in_spatial, kernel, strides, dilations, strict=True):
            eff = (k - 1) * d + 1
            total = max(0, s * -(-i // s) - i + eff - s)
            small, big = total // 2, total - total // 2
            out.append((big, small) if pad_type == "same_lower" else (small, big))
        return out
    raise ValueError(f"unknown pad_type {pad_type!r}")


class UnsupportedOpError(MobexError):
    """The program uses an op (or an op mode) the reference interpreter cannot run."""

    def __init__(self, op_type: str, detail: str = "") -> None:
        message = f"unsupported op {op_type}" + (f" ({detail})" if detail else "")
        super().__init__(
            message,
            hint="run the Core ML model on macOS (MLModel.predict) to validate it, "
            "or implement the op in mobex/runtime/mil",
        )
        self.op_type = op_type
