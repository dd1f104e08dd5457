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
        try:
            self._method = self._program.load_method(METHOD)
        except RuntimeError as e:
            raise _load_failure(self.path, e) from None
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


def _load_failure(path: Path, error: RuntimeError) -> Exception:
    """A UsageError when the program needs a backend this runtime lacks (a Core ML .pte on Linux), else `error`."""
    from executorch.runtime import Runtime

    have = set(Runtime.get().backend_registry.registered_backend_names)
    missing = sorted(set(read_delegation_plan(path).delegates) - have)
    if not missing:
        return RuntimeError(f"ExecuTorch could not load the method of {path}: {error}")
    hint = "run its ML program with CoreMLDelegateRunner" if COREML_BACKEND in missing else None
    return UsageError(
        f"{path} needs the {', '.join(missing)} backend, which this ExecuTorch runtime does not have "
        f"(it has {', '.join(sorted(have))})",
        hint=hint,
    )


def _to_numpy(torch: Any, y: Any) -> np.ndarray:
    if not isinstance(y, torch.Tensor):
        return np.asarray(y)
    if y.is_floating_point() and y.dtype != torch.float32:
        y = y.float()
    return y.numpy()


# --------------------------------------------------------------------------- the Core ML delegate

COREML_BACKEND = "CoreMLBackend"
_MAX_NODES = 10_000  # files and folders in one flattened Core ML package
_MAX_DEPTH = 32


def read_flattened_directory(payload: bytes) -> dict[str, bytes]:
    """The files of ExecuTorch's Core ML delegate payload (its "in-memory filesystem"), relative path -> bytes.

    The payload is the files' bytes followed by their index, a JSON object stored reversed at the end
    (executorch/backends/apple/coreml/runtime/inmemoryfs). ExecuTorch's own `unflatten_directory_contents`
    writes whatever names the index holds, `..` included, so mobex reads it here instead, bounded: at most
    _MAX_NODES entries, _MAX_DEPTH levels, names without separators or dots-only, data inside the payload,
    every node reached once from the one root. Raises UsageError on anything else."""
    import json

    try:
        index, length = json.JSONDecoder().raw_decode(payload[::-1][: 1 << 24].decode("latin-1"))
        nodes = index["nodes"]
    except (ValueError, KeyError, TypeError):
        raise UsageError("the Core ML delegate payload has no readable file index") from None
    if not isinstance(nodes, list) or not 0 < len(nodes) <= _MAX_NODES:
        raise UsageError("the Core ML delegate payload's file index is empty or too large")
    children = [set((n.get("children") or {}).values()) for n in nodes]
    roots = set(range(len(nodes))) - set().union(*children)
    if len(roots) != 1:
        raise UsageError("the Core ML delegate payload's file index has no single root")
    files: dict[str, bytes] = {}
    limit = len(payload) - length
    seen: set[int] = set()

    def walk(i: int, prefix: str, depth: int) -> None:
        node = nodes[i]
        if i in seen or depth > _MAX_DEPTH:
            raise UsageError("the Core ML delegate payload's file index has a cycle or is too deep")
        seen.add(i)
        for name, child in sorted((node.get("children") or {}).items()):
            if not isinstance(child, int) or not 0 <= child < len(nodes) or not _safe_name(name):
                raise UsageError(f"the Core ML delegate payload holds an unsafe entry {name!r}")
            path = f"{prefix}{name}"
            if nodes[child].get("kind") == 1:
                walk(child, path + "/", depth + 1)
                continue
            region = nodes[child].get("dataRegion") or {}
            start, size = int(region.get("offset", -1)), int(region.get("size", -1))
            if start < 0 or size < 0 or start + size > limit:
                raise UsageError(f"the Core ML delegate payload's entry {path!r} points outside it")
            files[path] = payload[start : start + size]

    walk(next(iter(roots)), "", 0)
    return files


def _safe_name(name: object) -> bool:
    return isinstance(name, str) and name not in ("", ".", "..") and not any(c in name for c in "/\\\0")


def delegate_payload(path: Path, backend_id: str) -> bytes:
    """The processed bytes of the one `backend_id` delegate of a verified `.pte` (ExecuTorch's own reader)."""
    from executorch.exir._serialize._program import _extract_delegate_payload  # noqa: PLC2701

    load_program(path)
    payload = _extract_delegate_payload(Path(path).read_bytes(), backend_id)
    if payload is None:
        raise UsageError(f"{path} has no {backend_id} delegate")
    return payload


class CoreMLDelegateRunner:
    """Runs a `.pte` whose `forward` is one Core ML delegate call, by running that ML program in mobex's MIL
    reference interpreter (Linux has no Core ML, and ExecuTorch's Linux runtime no Core ML backend).

    Same contract as ExecutorchRunner (names from the program, outputs in torch order). Only a program with
    no op outside the Core ML partition qualifies: anything else would need ExecuTorch's runtime around it.
    `num_threads` is accepted for the runner contract; the interpreter runs on numpy/torch's own threads."""

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        import json
        import tempfile

        from mobex.runtime.mil import MilReferenceRunner

        require_executorch("CoreMLDelegateRunner")
        self.path, self.num_threads = Path(path), num_threads
        plan = read_delegation_plan(self.path)
        if plan.delegates != {COREML_BACKEND: 1} or plan.kernels:
            raise UsageError(
                f"{self.path} is not one Core ML partition ({plan.summary()})",
                hint="the MIL reference interpreter can only check a program that Core ML runs entirely",
            )
        files = read_flattened_directory(delegate_payload(self.path, COREML_BACKEND))
        self._tmp = tempfile.TemporaryDirectory(prefix="mobex-coreml-delegate-")  # lives as long as the runner
        self.package = _write_package(files, Path(self._tmp.name))
        meta = json.loads(files.get("metadata.json", b"{}"))
        io = read_pte_io(load_program(self.path))
        self.inputs, self.outputs = io.inputs, io.outputs
        self._mil = MilReferenceRunner(self.package)
        ins, outs = _delegate_order(self.path, len(meta.get("inputNames", [])))
        mil_in, mil_out = list(meta.get("inputNames", [])), list(meta.get("outputNames", []))
        if sorted(ins) != list(range(len(self.inputs))) or sorted(outs) != list(range(len(self.outputs))):
            raise UsageError(f"{self.path}: the Core ML partition does not take exactly the program's inputs")
        self._feed = [(self.inputs[k].name, mil_in[j], np.dtype(self.inputs[k].dtype)) for j, k in enumerate(ins)]
        self._order = outs  # program output i <- delegate output outs[i]
        self._mil_outputs = mil_out

    def unsupported_ops(self) -> list[str]:
        """Ops of the delegated ML program that the MIL reference interpreter cannot run (empty: it runs)."""
        return self._mil.unsupported_ops()

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One inference in the MIL reference interpreter; outputs in torch output order, float as float32."""
        mil_feed = {}
        for name, mil_name, dtype in self._feed:
            if name not in feed:
                raise missing_input(name, feed, [s.name for s in self.inputs])
            mil_feed[mil_name] = np.asarray(feed[name], dtype=dtype)
        outs = self._mil.run(mil_feed)
        ordered = [outs[j] for j in self._order]
        return [o.astype(np.float32) if o.dtype.kind == "f" else o for o in ordered]


def _write_package(files: dict[str, bytes], root: Path) -> Path:
    """Write the payload's files under `root`; the `.mlpackage` folder among them."""
    packages = {rel.split("/")[0] for rel in files if rel.split("/")[0].endswith(".mlpackage")}
    if len(packages) != 1:
        raise UsageError(f"the Core ML delegate payload holds {len(packages)} .mlpackage folders, not one")
    for rel, data in files.items():
        target = root.joinpath(*rel.split("/"))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return root / packages.pop()


def _delegate_order(path: Path, delegate_inputs: int) -> tuple[list[int], list[int]]:
    """For the one delegate call of `forward`: which program input each delegate input is, and which
    delegate output each program output comes from (positions; from the call's value indices)."""
    from executorch.exir._serialize._program import deserialize_pte_binary  # noqa: PLC2701
    from executorch.exir.schema import DelegateCall

    program = deserialize_pte_binary(Path(path).read_bytes()).program
    plan = next(p for p in program.execution_plan if p.name == METHOD)
    call = next(i.instr_args for c in plan.chains for i in c.instructions if isinstance(i.instr_args, DelegateCall))
    args_in, args_out = call.args[:delegate_inputs], call.args[delegate_inputs:]
    try:
        return [plan.inputs.index(v) for v in args_in], [args_out.index(v) for v in plan.outputs]
    except ValueError:
        raise UsageError(f"{path}: the Core ML partition's inputs and outputs are not the program's own") from None
