"""Load a saved `.mlpackage` (mlprogram) into a flat, pre-resolved list of steps.

The package is read the way it ships: the protobuf spec plus `weights/weight.bin`, rebuilt into a
pymil Program by coremltools' own milproto loader (works on Linux). Everything that does not depend
on the inputs is settled here, once: constants are materialised (fp16 ones widened to float32
containers), `constexpr_*` weights are decompressed, ops whose inputs are all constant are folded,
each op's kernel is looked up and its constant arguments prepared, and the last use of every value
is recorded so `run` can free intermediates early.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import MobexError, UsageError

from . import ops_constexpr, ops_elementwise, ops_nn, ops_tensor  # noqa: F401  (register kernels)
from .ops_common import (
    BOUNDARY_DTYPES,
    CONTAINER_DTYPES,
    KERNELS,
    Kernel,
    OpInfo,
    UnsupportedOpError,
    round_fp16,
)


class MilExecutionError(MobexError):
    """A kernel failed on an op of the program (bad shapes, unexpected values)."""


@dataclass(frozen=True)
class Step:
    """One op, ready to run: where each input comes from and what to do with each output."""

    fn: Kernel
    info: OpInfo
    const_args: dict[str, Any]
    var_args: tuple[tuple[str, str], ...]  # (input name, value name)
    list_args: tuple[tuple[str, tuple[tuple[bool, Any], ...]], ...]  # (input name, ((is_var, name|value), ...))
    outputs: tuple[str, ...]
    exact: bool
    release: tuple[str, ...] = ()  # values not needed after this step


@dataclass
class CompiledProgram:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_dtypes: dict[str, str]  # input name -> MIL dtype name
    output_dtypes: list[str]  # MIL dtype name per output
    steps: list[Step]
    consts: dict[str, Any]  # folded values that are program outputs
    unsupported: list[str]  # op types this interpreter cannot run, in program order, unique
    opset: int
    op_counts: dict[str, int] = field(default_factory=dict)


# --------------------------------------------------------------------------- loading


def load_pymil_program(mlpackage_path: Path):
    """(pymil Program | None, spec, load error | None) of a saved .mlpackage, weights from its weight.bin."""
    from mobex.runtime.coremltools_import import import_coremltools

    ct = import_coremltools()  # without the converters mobex never uses (~12 s less in the build's process)
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.libmodelpackage import ModelPackage

    path = Path(mlpackage_path)
    if not path.exists():
        raise UsageError(f"Core ML package not found: {path}", hint="pass the path of a saved .mlpackage")
    if path.is_dir():
        model_file = ModelPackage(str(path)).getRootModel().path()
        weights_dir = os.path.join(os.path.dirname(model_file), "weights")
    else:
        weights_dir = str(path.parent / "weights")
    spec = ct.utils.load_spec(str(path))
    if spec.WhichOneof("Type") != "mlProgram":
        raise UsageError(
            f"{path} is a Core ML '{spec.WhichOneof('Type')}' model, not an mlprogram",
            hint="the MIL reference interpreter runs mlprogram models (convert with convert_to='mlprogram')",
        )
    try:
        prog = milproto_load(spec, spec.specificationVersion, weights_dir)
    except Exception as exc:  # an op or dtype this coremltools cannot parse: report it, do not crash
        return None, spec, exc
    return prog, spec, None


def _mil_dtype(var) -> str:
    from coremltools.converters.mil.mil import types

    try:
        return types.builtin_to_string(var.dtype)
    except Exception:  # lists, dicts (classify), states: no single element dtype
        return "unknown"


def _static_shape(var) -> tuple[int | None, ...] | None:
    from coremltools.converters.mil.mil.types.symbolic import is_symbolic

    try:
        shape = var.shape
    except Exception:  # lists, states: no tensor shape
        return None
    if shape is None:
        return None
    return tuple(None if is_symbolic(d) else int(d) for d in shape)


def _const_value(val: Any) -> Any:
    """A pymil const value in the interpreter's representation (fp16 kept in float32)."""
    if isinstance(val, str | bytes):
        return val
    arr = np.asarray(val)
    if arr.dtype == np.float16:
        return arr.astype(np.float32)
    if arr.dtype == np.float64:
        return arr.astype(np.float32)
    if arr.dtype.kind in "US":
        return str(arr.reshape(-1)[0]) if arr.size == 1 else arr
    return arr


def finish(value: Any, mil_dtype: str, exact: bool) -> Any:
    """A kernel output in the declared dtype's container; fp16 values rounded to fp16."""
    if isinstance(value, str):
        return value
    arr = np.asarray(value)
    if mil_dtype == "fp16":
        if exact and arr.dtype == np.float32:
            return arr
        return round_fp16(arr)
    container = CONTAINER_DTYPES.get(mil_dtype)
    if container is not None and arr.dtype != container:
        return arr.astype(container)
    return arr


def _tensor_spec(name: str, var) -> TensorSpec:
    shape = _static_shape(var) or ()
    mil = _mil_dtype(var)
    dtype = BOUNDARY_DTYPES[mil].name if mil in BOUNDARY_DTYPES else mil
    return TensorSpec(name=name, shape=tuple(-1 if d is None else d for d in shape), dtype=dtype)


def _raise_unsupported(op_type: str, detail: str = ""):
    def kernel(a, info):
        raise UnsupportedOpError(op_type, detail)

    return kernel


# --------------------------------------------------------------------------- compiling


def compile_program(prog, function_name: str = "main") -> CompiledProgram:
    """Resolve a pymil Program's function into steps (see module docstring)."""
    if function_name not in prog.functions:
        raise UsageError(
            f"the program has no function {function_name!r} (functions: {sorted(prog.functions)})",
            hint="pick one of the program's functions",
        )
    func = prog.functions[function_name]
    opset = int(getattr(func.opset_version, "value", 0) or 0) if func.opset_version is not None else 0

    consts: dict[str, Any] = {}
    steps: list[Step] = []
    unsupported: list[str] = []
    counts: dict[str, int] = {}

    def mark_unsupported(op_type: str) -> None:
        if op_type not in unsupported:
            unsupported.append(op_type)

    for op in func.operations:
        counts[op.op_type] = counts.get(op.op_type, 0) + 1
        if op.op_type == "const":
            consts[op.outputs[0].name] = _const_value(op.outputs[0].val)
            continue
        info = OpInfo(
            name=op.name,
            op_type=op.op_type,
            out_shapes=tuple(_static_shape(v) for v in op.outputs),
            out_dtypes=tuple(_mil_dtype(v) for v in op.outputs),
            opset=opset,
        )
        const_args: dict[str, Any] = {}
        var_args: list[tuple[str, str]] = []
        list_args: list[tuple[str, tuple[tuple[bool, Any], ...]]] = []
        for arg, v in op.inputs.items():
            if isinstance(v, list | tuple):
                items = tuple((False, consts[x.name]) if x.name in consts else (True, x.name) for x in v)
                if all(not is_var for is_var, _ in items):
                    const_args[arg] = [val for _, val in items]
                else:
                    list_args.append((arg, items))
            elif v.name in consts:
                const_args[arg] = consts[v.name]
            else:
                var_args.append((arg, v.name))
        outputs = tuple(v.name for v in op.outputs)

        entry = KERNELS.get(op.op_type)
        if entry is None or getattr(op, "blocks", None):
            mark_unsupported(op.op_type)
            steps.append(
                Step(
                    _raise_unsupported(op.op_type), info, const_args, tuple(var_args), tuple(list_args), outputs, False
                )
            )
            continue
        prepared = entry.prepare(const_args, info) if entry.prepare is not None else const_args
        step = Step(entry.fn, info, prepared, tuple(var_args), tuple(list_args), outputs, entry.exact)
        if not var_args and not list_args:  # every input is known: fold now
            try:
                results = run_step(step, {})
            except UnsupportedOpError:
                mark_unsupported(op.op_type)
                steps.append(step)
                continue
            consts.update(zip(outputs, results, strict=True))
            continue
        steps.append(step)

    out_vars = list(func.outputs)
    output_specs = [_tensor_spec(v.name, v) for v in out_vars]
    # Keep only the folded values a program output needs; steps carry their own const args.
    kept = {v.name: consts[v.name] for v in out_vars if v.name in consts}
    inputs = [_tensor_spec(name, var) for name, var in func.inputs.items()]
    compiled = CompiledProgram(
        inputs=inputs,
        outputs=output_specs,
        input_dtypes={name: _mil_dtype(var) for name, var in func.inputs.items()},
        output_dtypes=[_mil_dtype(v) for v in out_vars],
        steps=steps,
        consts=kept,
        unsupported=unsupported,
        opset=opset,
        op_counts=counts,
    )
    _plan_releases(compiled)
    return compiled


def _proto_op_types(block) -> list[str]:
    """Every op type in a proto block, nested blocks included, in order."""
    found: list[str] = []
    for op in block.operations:
        found.append(op.type)
        for inner in op.blocks:
            found.extend(_proto_op_types(inner))
    return found


def _feature_spec(feature) -> TensorSpec:
    kind = feature.type.WhichOneof("Type")
    if kind == "multiArrayType":
        from coremltools.proto import FeatureTypes_pb2

        arr = feature.type.multiArrayType
        dtype = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()
        return TensorSpec(name=feature.name, shape=tuple(int(d) for d in arr.shape), dtype=dtype)
    return TensorSpec(name=feature.name, shape=(), dtype=kind or "unknown")


def compile_unloadable(spec, function_name: str, error: Exception) -> CompiledProgram:
    """A program coremltools cannot parse: no steps, only what can be read off the proto.

    The op types without a kernel (or, failing that, a placeholder naming the load error) are the
    unsupported ops, so the validator can still report before running.
    """
    functions = spec.mlProgram.functions
    name = function_name if function_name in functions else next(iter(functions), function_name)
    types_in_program: list[str] = []
    if name in functions:
        func = functions[name]
        types_in_program = _proto_op_types(func.block_specializations[func.opset])
    counts: dict[str, int] = {}
    for op_type in types_in_program:
        counts[op_type] = counts.get(op_type, 0) + 1
    unknown = [t for t in dict.fromkeys(types_in_program) if t != "const" and t not in KERNELS]
    return CompiledProgram(
        inputs=[_feature_spec(f) for f in spec.description.input],
        outputs=[_feature_spec(f) for f in spec.description.output],
        input_dtypes={},
        output_dtypes=[],
        steps=[],
        consts={},
        unsupported=unknown or [f"<unloadable program: {type(error).__name__}: {error}>"],
        opset=0,
        op_counts=counts,
    )


def _plan_releases(compiled: CompiledProgram) -> None:
    """Record after which step each intermediate value is last read, so it can be dropped."""
    keep = {spec.name for spec in compiled.outputs}
    last_use: dict[str, int] = {}
    for i, step in enumerate(compiled.steps):
        for _, name in step.var_args:
            last_use[name] = i
        for _, items in step.list_args:
            for is_var, name in items:
                if is_var:
                    last_use[name] = i
        for name in step.outputs:  # an output nobody reads dies at once
            last_use.setdefault(name, i)
    by_step: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name not in keep:
            by_step.setdefault(i, []).append(name)
    for i, names in by_step.items():
        compiled.steps[i] = replace(compiled.steps[i], release=tuple(names))


def run_step(step: Step, env: dict[str, Any]) -> tuple[Any, ...]:
    """Run one step against the current values; return its outputs, finished."""
    args = dict(step.const_args)
    for arg, name in step.var_args:
        args[arg] = env[name]
    for arg, items in step.list_args:
        args[arg] = [env[v] if is_var else v for is_var, v in items]
    try:
        result = step.fn(args, step.info)
    except (UnsupportedOpError, MilExecutionError):
        raise
    except Exception as exc:
        raise MilExecutionError(
            f"op {step.info.name!r} ({step.info.op_type}) failed in the MIL reference interpreter: {exc}"
        ) from exc
    if len(step.outputs) == 1:
        result = (result,)
    return tuple(finish(value, dtype, step.exact) for value, dtype in zip(result, step.info.out_dtypes, strict=True))
