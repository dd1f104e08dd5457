"""ExecuTorch: run a `.pte` program with ExecuTorch's own runtime (`executorch.runtime`), XNNPACK included.

Same contract as `TfliteRunner`: `ExecutorchRunner(path, num_threads)` does all set-up (load, verify,
plan the method) in `__init__`; `run(feed)` takes `{input name: numpy array}` and returns the outputs as
numpy arrays in torch output order, float outputs as float32, integer outputs in their stored dtype.
Integer and float64 feeds are cast to the dtype the program takes (ExecuTorch keeps int64 inputs as
int64, unlike litert-torch's int32).

Names: a `.pte` has no I/O names, only positions. mobex's converter adds two constant methods,
`mobex_input_names` and `mobex_output_names` (ExecuTorch's way of storing metadata in a program, read
with `Program.load_method(...).execute([])`), so the runner can map a feed by name. A `.pte` made
elsewhere gets `input_0 ..` / `output_0 ..`, or the names the caller passes.

Threads: XNNPACK and ExecuTorch's optimized kernels share one process-wide pthreadpool. Its size can
only be changed by `_unsafe_reset_threadpool`, which destroys the pool that every method loaded so far
holds a pointer to (XNNPACK captures it when the method is loaded, see XNNCompiler.cpp). So a runner
sets the pool size before it loads its method, and every reset done here bumps a generation counter:
a runner whose method was loaded under an older pool reloads it before its next run instead of
calling into a destroyed pool. Alternating runners with different thread counts is therefore correct
but slow (a reload per switch); the latency code creates one runner per thread count, in turn.

`executorch` is an optional extra: importing this module does not import it, and every entry point
raises a UsageError that says how to install it when it is missing.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import DataError, UsageError
from mobex.runtime.feeds import missing_input

INPUT_NAMES_METHOD = "mobex_input_names"
OUTPUT_NAMES_METHOD = "mobex_output_names"
METHOD = "forward"
EXTRA_HINT = (
    "install the optional ExecuTorch extra: `pip install --no-deps -r requirements.lock` installs it with "
    "everything else, or `pip install --no-deps executorch==1.5.1 ruamel.yaml==0.19.1 pandas==3.1.1`"
)

# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) -> numpy dtype names.
_SCALAR_TYPES = {
    0: "uint8",
    1: "int8",
    2: "int16",
    3: "int32",
    4: "int64",
    5: "float16",
    6: "float32",
    7: "float64",
    11: "bool",
}


def executorch_available() -> bool:
    """True when the `executorch` package can be imported (the optional extra is installed)."""
    try:
        return importlib.util.find_spec("executorch.exir") is not None
    except ModuleNotFoundError:  # no `executorch` package at all
        return False


def require_executorch(what: str) -> None:
    """Raise a UsageError naming `what` needed ExecuTorch when the optional extra is not installed."""
    if not executorch_available():
        raise UsageError(f"{what} needs the `executorch` package, which is not installed", hint=EXTRA_HINT)


def executorch_version() -> str:
    """The installed executorch version, for notes and provenance."""
    from importlib.metadata import version

    return version("executorch")


# --------------------------------------------------------------------------- the I/O contract


@dataclass(frozen=True)
class PteIO:
    """The I/O of a program's `forward`: inputs in call order, outputs in torch order."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def _dtype_name(code: int) -> str:
    try:
        return _SCALAR_TYPES[int(code)]
    except KeyError:
        raise UsageError(f"the program uses ExecuTorch scalar type {code}, which mobex cannot feed or read") from None


def _stored_names(program: Any, method: str, count: int, default: str) -> list[str]:
    """The names a constant method of mobex's converter stores, or `<default>_<i>` without it."""
    if method in program.method_names:
        names = [str(n) for n in program.load_method(method).execute([])]
        if len(names) == count:
            return names
    return [f"{default}_{i}" for i in range(count)]


def read_pte_io(
    program: Any, input_names: list[str] | None = None, output_names: list[str] | None = None
) -> PteIO:
    """The I/O contract of a loaded `executorch.runtime.Program` (see module docstring for names)."""
    meta = program.metadata(METHOD)
    n_in, n_out = meta.num_inputs(), meta.num_outputs()
    ins = list(input_names) if input_names is not None else _stored_names(program, INPUT_NAMES_METHOD, n_in, "input")
    outs = (
        list(output_names) if output_names is not None else _stored_names(program, OUTPUT_NAMES_METHOD, n_out, "output")
    )
    if len(ins) != n_in or len(outs) != n_out:
        raise UsageError(
            f"{len(ins)} input and {len(outs)} output names given, the program takes {n_in} inputs "
            f"and returns {n_out} outputs"
        )

    def spec(name: str, info: Any) -> TensorSpec:
        return TensorSpec(name=name, shape=tuple(int(d) for d in info.sizes()), dtype=_dtype_name(info.dtype()))

    return PteIO(
        inputs=[spec(n, meta.input_tensor_meta(i)) for i, n in enumerate(ins)],
        outputs=[spec(n, meta.output_tensor_meta(i)) for i, n in enumerate(outs)],
    )


def load_program(source: Path | bytes) -> Any:
    """Load and fully verify a `.pte` file or buffer (flatbuffer internal consistency) with ExecuTorch's runtime."""
    require_executorch("running a .pte")
    from executorch.runtime import Runtime, Verification

    if not isinstance(source, bytes):
        source = Path(source)
        if not source.is_file():
            raise UsageError(f"no ExecuTorch program at {source}")
    try:
        return Runtime.get().load_program(source, verification=Verification.InternalConsistency)
    except RuntimeError as e:
        where = source if isinstance(source, Path) else f"the {len(source)}-byte buffer"
        raise UsageError(f"{where} is not a valid ExecuTorch program: {e}") from None


def load_pte_io(path: Path) -> PteIO:
    """`read_pte_io` for a file (used by the converter and the quantizer to describe what they wrote)."""
    return read_pte_io(load_program(path))


# --------------------------------------------------------------------------- what runs where


@dataclass(frozen=True)
class DelegationPlan:
    """What `forward` of a `.pte` runs where, read from the program itself (what ships).

    `delegates`: backend id -> calls into it (each call runs one delegated partition);
    `kernels`: operator -> calls outside any delegate (ExecuTorch's portable/optimized kernels).
    """

    delegates: dict[str, int]
    kernels: dict[str, int]

    @property
    def partitions(self) -> int:
        return sum(self.delegates.values())

    def summary(self) -> str:
        where = ", ".join(f"{n} x {b}" for b, n in sorted(self.delegates.items())) or "no delegate"
        if not self.kernels:
            return f"{where}; no op outside a delegate"
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.kernels.items()))
        return f"{where}; outside delegates: {ops}"


def read_delegation_plan(path: Path) -> DelegationPlan:
    """Parse the program's instructions (ExecuTorch's own deserializer) and count delegate and kernel calls.

    Verifies the file with the runtime first: the parser is only ever given a program the runtime accepts."""
    load_program(path)
    from executorch.exir._serialize._program import deserialize_pte_binary  # noqa: PLC2701 - ExecuTorch's reader
    from executorch.exir.schema import DelegateCall, KernelCall

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    plan = next(p for p in program.execution_plan if p.name == METHOD)
    delegates: Counter[str] = Counter()
    kernels: Counter[str] = Counter()
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if isinstance(args, DelegateCall):
                delegates[plan.delegates[args.delegate_index].id] += 1
            elif isinstance(args, KernelCall):
                op = plan.operators[args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
    return DelegationPlan(delegates=dict(delegates), kernels=dict(kernels))


# --------------------------------------------------------------------------- threads


@dataclass
class _Pool:
    generation: int = 0  # bumped by every reset done here (module docstring)


_POOL = _Pool()


def _set_pool_threads(num_threads: int) -> None:
    """Size the process-wide threadpool to `num_threads` (a no-op when it already has that size)."""
    from executorch.extension.pybindings import portable_lib

    if portable_lib._threadpool_get_thread_count() != num_threads:  # noqa: SLF001 - the only thread control
        portable_lib._unsafe_reset_threadpool(num_threads)  # noqa: SLF001
        _POOL.generation += 1


# --------------------------------------------------------------------------- the runner


class ExecutorchRunner:
    """Runs a `.pte` in ExecuTorch's runtime with its XNNPACK delegate (see module docstring).

    `input_names` / `output_names` override the names stored in the program (needed only for a `.pte`
    that mobex did not write)."""

    def __init__(
        self,
        path: Path,
        num_threads: int = 1,
        *,
        input_names: list[str] | None = None,
        output_names: list[str] | None = None,
    ) -> None:
        require_executorch("ExecutorchRunner")
        import torch

        if num_threads < 1:
            raise UsageError(f"num_threads must be at least 1, got {num_threads}")
        self.path = Path(path)
        self.num_threads = num_threads
        self._torch = torch
        self._load()
        io = read_pte_io(self._program, input_names, output_names)
        self.inputs: list[TensorSpec] = io.inputs
        self.outputs: list[TensorSpec] = io.outputs
        self._input_names = [s.name for s in io.inputs]
        self._in = [(s.name, np.dtype(s.dtype)) for s in io.inputs]

    def _load(self) -> None:
        _set_pool_threads(self.num_threads)
        self._program = load_program(self.path)
        self._method = self._program.load_method(METHOD)
        self._generation = _POOL.generation

    def delegation(self) -> DelegationPlan:
        """Which backend runs which part of the program (parsed from the file, once per call)."""
        return read_delegation_plan(self.path)

    def delegate_partitions(self) -> int:
        """How many delegated partitions one run calls (1: the whole graph in one XNNPACK call)."""
        return self.delegation().partitions

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One inference; returns outputs in torch output order (see module docstring for dtypes)."""
        if self._generation != _POOL.generation:  # another runner resized the pool: our method's is gone
            self._load()
        torch = self._torch
        args = []
        for name, dtype in self._in:
            try:
                x = feed[name]
            except KeyError:
                raise missing_input(name, feed, self._input_names) from None
            args.append(torch.from_numpy(np.ascontiguousarray(x, dtype=dtype)))
        try:
            outputs = self._method.execute(args)
        except RuntimeError as e:
            raise self._diagnose(args, e) from None
        return [_to_numpy(torch, y) for y in outputs]

    def _diagnose(self, args: list[Any], error: RuntimeError) -> Exception:
        """A DataError naming the input whose shape the program does not take, else the runtime's error."""
        for spec, x in zip(self.inputs, args, strict=True):
            if tuple(x.shape) != tuple(spec.shape):
                return DataError(
                    f"input {spec.name!r} has shape {list(x.shape)}, the ExecuTorch program takes {list(spec.shape)}",
                    hint="the program has static shapes: feed one sample of the recipe's input shape",
                )
        return RuntimeError(f"ExecuTorch failed to run {self.path}: {error}")


def _to_numpy(torch: Any, y: Any) -> np.ndarray:
    if not isinstance(y, torch.Tensor):
        return np.asarray(y)
    if y.is_floating_point() and y.dtype != torch.float32:
        y = y.float()
    return y.numpy()
