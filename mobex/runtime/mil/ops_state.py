"""State ops of stateful programs (iOS18): `read_state`, `coreml_update_state`, and the buffers they use.

A state is a function input of type `state<tensor>`: a buffer that lives across predictions. Core ML
hands one to `predict` through `MLModel.make_state()` (fresh buffers are zeros); the program reads it
with `read_state` and overwrites it with `coreml_update_state`, which also returns the value written.
`MilState` plays the part of Core ML's MLState: the runner binds one `StateCell` per state input, and
the ops read and write the cell in place, so the next `run` with the same `MilState` sees the update.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import DataError

from .ops_common import CONTAINER_DTYPES, Args, OpaqueValue, OpInfo, register, round_fp16

_MIL_OF = {"float16": "fp16", "float32": "fp32"}


@dataclass
class StateCell(OpaqueValue):
    """One state buffer; `value` is kept in the interpreter's representation (fp16 in float32)."""

    value: np.ndarray


class MilState:
    """The state buffers of a stateful program, carried from one `MilReferenceRunner.run` to the next."""

    def __init__(self, cells: dict[str, StateCell], dtypes: dict[str, str]) -> None:
        self._cells = cells
        self._dtypes = dtypes

    @classmethod
    def zeros(cls, specs: list[TensorSpec]) -> MilState:
        cells, dtypes = {}, {}
        for spec in specs:
            mil = _MIL_OF.get(spec.dtype, spec.dtype)
            shape = tuple(max(d, 1) for d in spec.shape)
            cells[spec.name] = StateCell(np.zeros(shape, dtype=CONTAINER_DTYPES.get(mil, np.float32)))
            dtypes[spec.name] = spec.dtype
        return cls(cells, dtypes)

    @property
    def names(self) -> list[str]:
        return list(self._cells)

    def read(self, name: str) -> np.ndarray:
        """A copy of state `name`, in its declared dtype (float16 for fp16 states)."""
        return np.array(self._cell(name).value, dtype=self._dtypes[name])

    def write(self, name: str, value: np.ndarray) -> None:
        """Overwrite state `name` (same shape), e.g. to start from a given cache."""
        cell = self._cell(name)
        arr = np.asarray(value)
        if arr.shape != cell.value.shape:
            raise DataError(
                f"state {name!r} has shape {cell.value.shape}, got {arr.shape}",
                hint="write an array of the state's shape",
            )
        arr = arr.astype(cell.value.dtype)
        cell.value = round_fp16(arr) if self._dtypes[name] == "float16" else arr

    def cells_for(self, specs: list[TensorSpec]) -> dict[str, StateCell]:
        missing = [s.name for s in specs if s.name not in self._cells]
        if missing:
            raise DataError(
                f"the state has no buffer for {missing}",
                hint="create the state with make_state() of the same runner",
            )
        return {s.name: self._cells[s.name] for s in specs}

    def _cell(self, name: str) -> StateCell:
        if name not in self._cells:
            raise DataError(f"no state named {name!r}", hint=f"the program's states are {self.names}")
        return self._cells[name]


@register("read_state", exact=True)
def _read_state(a: Args, info: OpInfo):
    return a["input"].value


@register("coreml_update_state", exact=True, foldable=False)
def _coreml_update_state(a: Args, info: OpInfo):
    cell: StateCell = a["state"]
    value = np.asarray(a["value"], dtype=cell.value.dtype)
    if info.out_dtypes[0] == "fp16":
        value = round_fp16(value)
    cell.value = value
    return value
