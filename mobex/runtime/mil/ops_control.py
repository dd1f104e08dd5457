"""Control flow and tensor lists: `cond`, `while_loop`, `make_list` and the `list_*` ops.

Semantics follow coremltools' `ops/defs/iOS15/control_flow.py`. `cond` runs one of its two blocks;
`while_loop` runs its condition block, then its body block, on the loop variables until the
condition is false. A list (`make_list`) is an auto-resizing array of same-shaped tensors: unwritten
elements read as zeros, writing past the end grows a dynamic list. Lists are values, never edited in
place, so a loop body that writes one leaves the caller's copy untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops_common import CONTAINER_DTYPES, Args, OpaqueValue, OpInfo, bval, ilist, ival, register, sval

# A runaway loop is a program error; Core ML has no bound, but the reference interpreter must return.
MAX_LOOP_ITERATIONS = 1_000_000


@register("cond", takes_blocks=True)
def _cond(a: Args, info: OpInfo, blocks):
    return tuple(blocks.run(0 if bval(a["pred"]) else 1))


@register("while_loop", takes_blocks=True)
def _while_loop(a: Args, info: OpInfo, blocks):
    values = list(a["loop_vars"])
    for _ in range(MAX_LOOP_ITERATIONS):
        (go,) = blocks.run(0, *values)
        if not bval(go):
            return tuple(values)
        values = blocks.run(1, *values)
    raise RuntimeError(f"while_loop ran {MAX_LOOP_ITERATIONS} iterations without its condition turning false")


@dataclass(frozen=True)
class TensorList(OpaqueValue):
    """An immutable list of tensors; unset slots are None (they read as zeros)."""

    items: tuple[np.ndarray | None, ...]
    elem_shape: tuple[int, ...] | None
    dtype: np.dtype
    dynamic: bool

    def element(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self.items):
            raise IndexError(f"list index {index} out of range (length {len(self.items)})")
        value = self.items[index]
        if value is not None:
            return value
        if self.elem_shape is None:
            raise ValueError("read of an unwritten list element whose shape is unknown")
        return np.zeros(self.elem_shape, dtype=self.dtype)

    def written(self, updates: dict[int, np.ndarray]) -> TensorList:
        items = list(self.items)
        top = max(updates) + 1 if updates else 0
        if top > len(items):
            if not self.dynamic:
                raise IndexError(f"write at index {top - 1} of a fixed-length list of length {len(items)}")
            items += [None] * (top - len(items))
        for index, value in updates.items():
            if index < 0:
                raise IndexError(f"negative list index {index}")
            items[index] = np.asarray(value, dtype=self.dtype)
        shape = self.elem_shape
        if shape is None:
            shape = tuple(np.shape(next(iter(updates.values())))) if updates else None
        return TensorList(tuple(items), shape, self.dtype, self.dynamic)


def _elem_shape(a: Args) -> tuple[int, ...] | None:
    dims = a.get("elem_shape")
    if dims is None:
        return None
    try:
        return tuple(ival(d) for d in dims)
    except (TypeError, ValueError):  # a symbolic (string) dim: known only once an element is written
        return None


@register("make_list", foldable=False)
def _make_list(a: Args, info: OpInfo):
    length = ival(a.get("init_length", 1))
    dtype = CONTAINER_DTYPES.get(sval(a.get("dtype", "fp32")), np.dtype(np.float32))
    dynamic = bval(a.get("dynamic_length", True))
    return TensorList((None,) * length, _elem_shape(a), dtype, dynamic)


@register("list_length", exact=True)
def _list_length(a: Args, info: OpInfo):
    return np.int32(len(a["ls"].items))


@register("list_write", exact=True)
def _list_write(a: Args, info: OpInfo):
    return a["ls"].written({ival(a["index"]): np.asarray(a["value"])})


@register("list_read", exact=True)
def _list_read(a: Args, info: OpInfo):
    return a["ls"].element(ival(a["index"]))


@register("list_gather", exact=True)
def _list_gather(a: Args, info: OpInfo):
    ls: TensorList = a["ls"]
    indices = ilist(a["indices"])
    if not indices:
        return np.zeros((0, *(ls.elem_shape or ())), dtype=ls.dtype)
    return np.stack([ls.element(i) for i in indices])


@register("list_scatter", exact=True)
def _list_scatter(a: Args, info: OpInfo):
    values = np.asarray(a["value"])
    return a["ls"].written({i: values[k] for k, i in enumerate(ilist(a["indices"]))})
