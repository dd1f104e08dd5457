"""Execute a saved Core ML mlprogram on any host: the MIL reference interpreter.

`MilReferenceRunner(path)` loads the package once (spec + weight.bin, as shipped), resolves it into a
list of steps (see `program.py`), and `run(feed)` walks that list. fp16 programs are computed op by
op in float32 with each fp16 output rounded to fp16, so the numbers reflect the converted program
rather than a float32 idealisation. It validates the *program* (converter output, op semantics,
compressed weights), not the Core ML runtime, its compiler, or ANE/GPU accumulation order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import DataError

from .detection_io import DetectionIO
from .image_io import NativeIO
from .ops_common import BOUNDARY_DTYPES, CONTAINER_DTYPES, KERNELS, UnsupportedOpError, round_fp16
from .ops_state import MilState
from .program import (
    CompiledProgram,
    MilExecutionError,
    compile_program,
    compile_unloadable,
    load_pymil_program,
    run_block,
)

__all__ = ["MilExecutionError", "MilReferenceRunner", "MilState", "UnsupportedOpError", "supported_ops"]


def supported_ops() -> list[str]:
    """Every MIL op type the interpreter has a kernel for (plus `const`)."""
    return sorted({*KERNELS, "const"})


class MilReferenceRunner:
    """Run a saved `.mlpackage` with numpy/torch kernels.

    inputs / outputs: the program's I/O as TensorSpec (dtype as the caller sees it: "float16" for
    fp16 I/O; -1 for a flexible dim). `run` returns outputs in the program's output order.

    Stateful programs (iOS18 `read_state` / `coreml_update_state`): `states` lists the state
    buffers; `make_state()` returns fresh ones (zeros, as Core ML's `MLModel.make_state`), and
    `run(feed, state=s)` reads and updates them in place, so calling it again continues from there.
    Without a `state`, each `run` starts from fresh buffers.
    """

    def __init__(self, mlpackage_path: Path, function_name: str = "main") -> None:
        self.path = Path(mlpackage_path)
        prog, spec, load_error = load_pymil_program(self.path)
        self.spec_version: int = spec.specificationVersion
        self._program: CompiledProgram = (
            compile_program(prog, function_name)
            if load_error is None
            else compile_unloadable(spec, function_name, load_error)
        )
        self._native = NativeIO.read(spec)  # image inputs, classifier outputs (image_io.py)
        root = _root_spec(self.path)
        # Vision's detection layout and a pipeline's NMS stage (detection_io.py)
        self.detection: DetectionIO | None = DetectionIO.read(root, spec)
        self.inputs: list[TensorSpec] = self._program.inputs
        self.outputs: list[TensorSpec] = self._native.outputs(self._program.outputs)
        if self.detection is not None:
            self.outputs = self.detection.outputs(self.outputs)
        self.states: list[TensorSpec] = self._program.states

    # ------------------------------------------------------------------ introspection

    def unsupported_ops(self) -> list[str]:
        """Op types in the program this interpreter cannot run (known at load, before any run)."""
        return list(self._program.unsupported)

    def op_counts(self) -> dict[str, int]:
        """How many ops of each type the program holds (including const)."""
        return dict(self._program.op_counts)

    @property
    def computes_in_fp16(self) -> bool:
        """True when any op of the program produces fp16 values."""
        return any("fp16" in step.info.out_dtypes for step in self._program.all_steps())

    @property
    def is_stateful(self) -> bool:
        return bool(self.states)

    def make_state(self) -> MilState:
        """Fresh state buffers for this program (zeros), to pass to `run` call after call."""
        return MilState.zeros(self.states)

    # ------------------------------------------------------------------ running

    def _feed_value(self, spec: TensorSpec, value: Any) -> np.ndarray:
        mil = self._program.input_dtypes[spec.name]
        arr = np.asarray(self._native.feed(spec.name, value))
        if arr.dtype.kind not in "biuf":
            raise DataError(
                f"input {spec.name!r} has dtype {arr.dtype}, expected a numeric array ({spec.dtype})",
                hint="pass a numpy array of numbers",
            )
        expected = spec.shape
        if len(expected) != arr.ndim or any(e not in (-1, g) for e, g in zip(expected, arr.shape, strict=False)):
            raise DataError(
                f"input {spec.name!r} has shape {tuple(arr.shape)}, the Core ML program expects {tuple(expected)}",
                hint="reshape the data to the model's input shape (-1 marks a flexible dim)",
            )
        if mil == "fp16":
            return round_fp16(arr.astype(np.float32))
        return arr.astype(CONTAINER_DTYPES.get(mil, arr.dtype), copy=False)

    def run(self, feed: dict[str, np.ndarray], state: MilState | None = None) -> list[np.ndarray]:
        """Execute the program on one feed {input name: array}; outputs in program order, as numpy
        (a classifier's label and score dictionary as one score array: image_io.py).

        `state` (stateful programs): the buffers `read_state` reads and `coreml_update_state`
        writes; they are updated in place.
        """
        values = self._native.results([s.name for s in self._program.outputs], self._execute(feed, state))
        return values if self.detection is None else self.detection.results(values, feed)

    def run_native(self, feed: dict[str, np.ndarray], state: MilState | None = None) -> dict[str, Any]:
        """{output name: value} as Core ML gives them: a classifier's label (str) and {label: score}; an NMS
        pipeline's `confidence` and `coordinates` after its NonMaximumSuppression stage."""
        names = [s.name for s in self._program.outputs]
        native = self._native.native(names, self._execute(feed, state))
        return native if self.detection is None else self.detection.native(names, list(native.values()), feed)

    def _execute(self, feed: dict[str, np.ndarray], state: MilState | None) -> list[Any]:
        program = self._program
        if program.unsupported:
            raise UnsupportedOpError(
                program.unsupported[0],
                "the program also uses " + ", ".join(program.unsupported[1:]) if len(program.unsupported) > 1 else "",
            )
        missing = [s.name for s in self.inputs if s.name not in feed]
        if missing:
            raise DataError(
                f"missing input(s) {missing} for the Core ML program",
                hint=f"the program takes {[s.name for s in self.inputs]}",
            )
        env: dict[str, Any] = {s.name: self._feed_value(s, feed[s.name]) for s in self.inputs}
        if self.states:
            state = state if state is not None else self.make_state()
            env.update(state.cells_for(self.states))
        values = run_block(program.main, env)
        out = []
        for (is_var, _), value, mil in zip(program.main.outputs, values, program.output_dtypes, strict=True):
            # Copy folded constants: callers must not be able to edit the runner's state.
            arr = np.asarray(value) if is_var else np.array(value)
            boundary = BOUNDARY_DTYPES.get(mil)
            out.append(arr.astype(boundary) if boundary is not None and arr.dtype != boundary else arr)
        return out


def _root_spec(path: Path) -> Any:
    """The package's own spec (a pipeline's, where `load_pymil_program` gives its ML program stage)."""
    import coremltools as ct

    return ct.utils.load_spec(str(path))
