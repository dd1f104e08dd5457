"""Load a saved `.mlpackage` (mlprogram) into pre-resolved lists of steps, one per block.

The package is read the way it ships: the protobuf spec plus `weights/weight.bin`, rebuilt into a
pymil Program by coremltools' own milproto loader (works on Linux). Everything that does not depend
on the inputs is settled here, once: constants are materialised (fp16 ones widened to float32
containers), `constexpr_*` weights are decompressed, ops whose inputs are all constant are folded,
each op's kernel is looked up and its constant arguments prepared, and the last use of every value
is recorded so `run` can free intermediates early.

Control flow keeps its structure: a `cond` / `while_loop` step carries its nested blocks, compiled
the same way, and its kernel runs them (`Blocks`). Names are unique across a program, so every
block reads and writes the one value table; a block frees only the values it defines. State inputs
(stateful programs) are kept apart from tensor inputs: the runner binds their buffers.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import MobexError, UsageError

from . import (  # noqa: F401  (register the kernels)
    ops_constexpr,
    ops_control,
    ops_elementwise,
    ops_image,
    ops_nn,
    ops_random,
    ops_recurrent,
    ops_state,
    ops_tensor,
)
from .ops_common import (
    BOUNDARY_DTYPES,
    CONTAINER_DTYPES,
    KERNELS,
    Kernel,
    OpaqueValue,
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
    blocks: tuple[CompiledBlock, ...] = ()  # nested blocks (cond, while_loop), run by the kernel


@dataclass
class CompiledBlock:
    """A block of a MIL function: its inputs (loop variables), its steps, and where each output comes from."""

    inputs: tuple[str, ...]
    steps: list[Step]
    outputs: tuple[tuple[bool, Any], ...]  # (is_var, value name | folded value)
    free: frozenset[str] = frozenset()  # names the block reads from enclosing blocks


@dataclass
class CompiledProgram:
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_dtypes: dict[str, str]  # input name -> MIL dtype name
    output_dtypes: list[str]  # MIL dtype name per output
    main: CompiledBlock
    unsupported: list[str]  # op types this interpreter cannot run, in program order, unique
    opset: int
    op_counts: dict[str, int] = field(default_factory=dict)
    states: list[TensorSpec] = field(default_factory=list)  # state inputs (stateful programs, iOS18)

    @property
    def steps(self) -> list[Step]:
        """The top-level steps (nested blocks hang off their cond / while_loop step)."""
        return self.main.steps

    def all_steps(self):
        """Every step, nested blocks included."""
        stack = list(self.main.steps)
        while stack:
            step = stack.pop()
            yield step
            for block in step.blocks:
                stack.extend(block.steps)


# --------------------------------------------------------------------------- loading


def load_pymil_program(mlpackage_path: Path):
    """(pymil Program | None, spec, load error | None) of a saved .mlpackage, weights from its weight.bin. For a
    pipeline package, its first stage (the ML program of a detector's NMS pipeline)."""
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
    if spec.WhichOneof("Type") == "pipeline" and spec.pipeline.models:
        spec = spec.pipeline.models[0]  # a detector's NMS pipeline: the ML program, then NMS (detection_io.py)
    if spec.WhichOneof("Type") != "mlProgram":
        raise UsageError(
            f"{path} is a Core ML '{spec.WhichOneof('Type')}' model, not an mlprogram",
            hint="the MIL reference interpreter runs mlprogram models (convert with convert_to='mlprogram')",
        )
    try:
        prog = milproto_load(spec, spec.specificationVersion, weights_dir)
    except Exception as exc:  # an op or dtype this coremltools cannot parse: report it, do not crash
        if not any(sign in str(exc) for sign in (_DTYPE_AGREEMENT, _VARIADIC)):
            return None, spec, exc
        try:  # see _mixed_precision_inputs and _variadic_dims
            with _mixed_precision_inputs(), _variadic_dims():
                prog = milproto_load(spec, spec.specificationVersion, weights_dir)
        except Exception as retry_exc:
            return None, spec, retry_exc
    return prog, spec, None


_DTYPE_AGREEMENT = "must have the same data type as the named input"
_VARIADIC = "Variadic dimensions not yet implemented"


@contextlib.contextmanager
def _variadic_dims():
    """Let coremltools' loader read tensors of unknown rank (a variadic dimension in the proto).

    coremltools writes them (e.g. `fill` with a shape of symbolic length), and its builder types them
    with a variadic symbol, but its milproto loader raises NotImplementedError on reading one back.
    While loading, such a dimension becomes the same variadic symbol the builder would have used.
    """
    from coremltools.converters.mil.frontend.milproto import helper
    from coremltools.converters.mil.mil.program import get_new_variadic_symbol

    original = helper.get_proto_dim

    def get_proto_dim(dim):
        if dim.WhichOneof("dimension") != "constant" and dim.unknown.variadic:
            return get_new_variadic_symbol()
        return original(dim)

    helper.get_proto_dim = get_proto_dim
    try:
        yield
    finally:
        helper.get_proto_dim = original


@contextlib.contextmanager
def _mixed_precision_inputs():
    """Let coremltools' loader accept ops whose same-domain inputs mix fp16 and fp32.

    coremltools itself writes such programs: batch_norm with fp16 statistics and the default fp32
    epsilon, converted at fp32 for iOS15, gets an fp32 `x` (the input made fp32 without a cast)
    next to fp16 `mean` / `variance`, with its output still declared fp16. Its milproto loader then
    re-checks `InputSpec.validate_inputs` and the declared output types and rejects the program.
    While loading, mismatches of exactly that kind (fp16 vs fp32 of the same shape) are tolerated;
    every other check still runs. The kernels compute in float32; an output takes the dtype
    coremltools infers for it (that of `x`).
    """
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.input_type import InputSpec, InternalInputType, InternalVar

    original_validate, original_compatible = InputSpec.validate_inputs, types.is_compatible_type

    def validate(self, op_name, op_type, candidate_kvs):
        try:
            return original_validate(self, op_name, op_type, candidate_kvs)
        except ValueError as exc:
            if _DTYPE_AGREEMENT not in str(exc):
                raise
        for name, var in candidate_kvs.items():  # the checks that follow the dtype agreement in coremltools
            input_type = self.input_types.get(name)
            if var is None or input_type is None:
                raise ValueError(f"op {op_name} ({op_type}): input {name} is None or unknown")
            if input_type.const and not isinstance(input_type, InternalInputType) and not var.is_descendant_of_const:
                raise ValueError(f"op {op_name} ({op_type}): input {name} must be const at compile time")
            if not isinstance(var, InternalVar) and not input_type.is_compatible(var):
                raise ValueError(f"op {op_name} ({op_type}): input {name} has an unsupported type")

    floats = (types.fp16, types.fp32)

    def compatible(t1, t2) -> bool:
        if original_compatible(t1, t2):
            return True
        return (
            types.is_tensor(t1)
            and types.is_tensor(t2)
            and t1.get_primitive() in floats
            and t2.get_primitive() in floats
            and t1.get_shape() == t2.get_shape()
        )

    InputSpec.validate_inputs, types.is_compatible_type = validate, compatible
    try:
        yield
    finally:
        InputSpec.validate_inputs, types.is_compatible_type = original_validate, original_compatible


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


_PASS_THROUGH = (str, OpaqueValue)


def finish(value: Any, mil_dtype: str, exact: bool) -> Any:
    """A kernel output in the declared dtype's container; fp16 values rounded to fp16.

    Values that are not tensors (lists of make_list, strings) pass through unchanged.
    """
    if isinstance(value, _PASS_THROUGH):
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
    def kernel(a, info, *blocks):
        raise UnsupportedOpError(op_type, detail)

    return kernel


def _is_state(var) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_state(var.sym_type)


# --------------------------------------------------------------------------- compiling


@dataclass
class _Compiler:
    """Walks a pymil function block by block; shared across nested blocks (var names are unique)."""

    opset: int
    consts: dict[str, Any] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def mark_unsupported(self, op_type: str) -> None:
        if op_type not in self.unsupported:
            self.unsupported.append(op_type)

    def ref(self, var) -> tuple[bool, Any]:
        """(is_var, name) for a runtime value, (False, value) for a folded one."""
        return (False, self.consts[var.name]) if var.name in self.consts else (True, var.name)

    def block(self, block, keep: set[str] | None = None) -> CompiledBlock:
        steps: list[Step] = []
        for op in block.operations:
            self.op(op, steps)
        compiled = CompiledBlock(
            inputs=tuple(v.name for v in block.inputs) if not isinstance(block.inputs, dict) else (),
            steps=steps,
            outputs=tuple(self.ref(v) for v in block.outputs),
        )
        _plan_releases(compiled, keep or set())
        return compiled

    def op(self, op, steps: list[Step]) -> None:
        self.counts[op.op_type] = self.counts.get(op.op_type, 0) + 1
        if op.op_type == "const":
            self.consts[op.outputs[0].name] = _const_value(op.outputs[0].val)
            return
        info = OpInfo(
            name=op.name,
            op_type=op.op_type,
            out_shapes=tuple(_static_shape(v) for v in op.outputs),
            out_dtypes=tuple(_mil_dtype(v) for v in op.outputs),
            opset=self.opset,
        )
        const_args: dict[str, Any] = {}
        var_args: list[tuple[str, str]] = []
        list_args: list[tuple[str, tuple[tuple[bool, Any], ...]]] = []
        for arg, v in op.inputs.items():
            if isinstance(v, list | tuple):
                items = tuple(self.ref(x) for x in v)
                if all(not is_var for is_var, _ in items):
                    const_args[arg] = [val for _, val in items]
                else:
                    list_args.append((arg, items))
            elif v.name in self.consts:
                const_args[arg] = self.consts[v.name]
            else:
                var_args.append((arg, v.name))
        outputs = tuple(v.name for v in op.outputs)
        blocks = tuple(self.block(b, keep={v.name for v in b.outputs}) for b in op.blocks)
        entry = KERNELS.get(op.op_type)
        if entry is None or bool(blocks) != entry.takes_blocks:
            self.mark_unsupported(op.op_type)
            fn = _raise_unsupported(op.op_type)
            steps.append(Step(fn, info, const_args, tuple(var_args), tuple(list_args), outputs, False, blocks=blocks))
            return
        prepared = entry.prepare(const_args, info) if entry.prepare is not None else const_args
        step = Step(entry.fn, info, prepared, tuple(var_args), tuple(list_args), outputs, entry.exact, blocks=blocks)
        if not var_args and not list_args and not blocks and entry.foldable:  # all inputs known: fold now
            try:
                results = run_step(step, {})
            except UnsupportedOpError:
                self.mark_unsupported(op.op_type)
                steps.append(step)
                return
            self.consts.update(zip(outputs, results, strict=True))
            return
        steps.append(step)


def _opset_of(func) -> int:
    return int(getattr(func.opset_version, "value", 0) or 0) if func.opset_version is not None else 0


def compile_program(prog, function_name: str = "main") -> CompiledProgram:
    """Resolve a pymil Program's function into steps (see module docstring)."""
    if function_name not in prog.functions:
        raise UsageError(
            f"the program has no function {function_name!r} (functions: {sorted(prog.functions)})",
            hint="pick one of the program's functions",
        )
    func = prog.functions[function_name]
    compiler = _Compiler(opset=_opset_of(func))
    out_vars = list(func.outputs)
    main = compiler.block(func, keep={v.name for v in out_vars})
    tensors = {name: var for name, var in func.inputs.items() if not _is_state(var)}
    states = {name: var for name, var in func.inputs.items() if _is_state(var)}
    return CompiledProgram(
        inputs=[_tensor_spec(name, var) for name, var in tensors.items()],
        outputs=[_tensor_spec(v.name, v) for v in out_vars],
        input_dtypes={name: _mil_dtype(var) for name, var in func.inputs.items()},
        output_dtypes=[_mil_dtype(v) for v in out_vars],
        main=main,
        unsupported=compiler.unsupported,
        opset=compiler.opset,
        op_counts=compiler.counts,
        states=[_tensor_spec(name, var) for name, var in states.items()],
    )


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
        main=CompiledBlock(inputs=(), steps=[], outputs=()),
        unsupported=unknown or [f"<unloadable program: {type(error).__name__}: {error}>"],
        opset=0,
        op_counts=counts,
    )


def _step_reads(step: Step) -> set[str]:
    names = {name for _, name in step.var_args}
    names.update(name for _, items in step.list_args for is_var, name in items if is_var)
    for block in step.blocks:
        names.update(block.free)
    return names


def _plan_releases(block: CompiledBlock, keep: set[str]) -> None:
    """Record after which step each value defined in the block is last read, so it can be dropped.

    Only values the block defines (its inputs and its steps' outputs) are released, never those of
    enclosing blocks (a loop body runs again) nor the block's outputs (`keep`). Also records the
    names the block reads from outside (`free`), which the enclosing step counts as its reads.
    """
    defined = set(block.inputs)
    reads: set[str] = set()
    last_use: dict[str, int] = {}
    for i, step in enumerate(block.steps):
        used = _step_reads(step)
        reads.update(used)
        for name in used:
            last_use[name] = i
        for name in step.outputs:  # an output nobody reads dies at once
            last_use.setdefault(name, i)
        defined.update(step.outputs)
    reads.update(name for is_var, name in block.outputs if is_var)
    block.free = frozenset(reads - defined)
    by_step: dict[int, list[str]] = {}
    for name, i in last_use.items():
        if name in defined and name not in keep:
            by_step.setdefault(i, []).append(name)
    for i, names in by_step.items():
        block.steps[i] = replace(block.steps[i], release=tuple(names))


def run_block(block: CompiledBlock, env: dict[str, Any], inputs: tuple[Any, ...] = ()) -> list[Any]:
    """Bind the block's inputs, run its steps against `env`, and return its outputs."""
    for name, value in zip(block.inputs, inputs, strict=True):
        env[name] = value
    for step in block.steps:
        results = run_step(step, env)
        for name, value in zip(step.outputs, results, strict=True):
            env[name] = value
        for name in step.release:
            env.pop(name, None)
    return [env[v] if is_var else v for is_var, v in block.outputs]


@dataclass(frozen=True)
class Blocks:
    """What a control-flow kernel gets to run its nested blocks (`blocks.run(i, *inputs)`)."""

    blocks: tuple[CompiledBlock, ...]
    env: dict[str, Any]

    def run(self, index: int, *inputs: Any) -> list[Any]:
        return run_block(self.blocks[index], self.env, inputs)


def run_step(step: Step, env: dict[str, Any]) -> tuple[Any, ...]:
    """Run one step against the current values; return its outputs, finished."""
    args = dict(step.const_args)
    for arg, name in step.var_args:
        args[arg] = env[name]
    for arg, items in step.list_args:
        args[arg] = [env[v] if is_var else v for is_var, v in items]
    try:
        result = step.fn(args, step.info, Blocks(step.blocks, env)) if step.blocks else step.fn(args, step.info)
    except (UnsupportedOpError, MilExecutionError):
        raise
    except Exception as exc:
        raise MilExecutionError(
            f"op {step.info.name!r} ({step.info.op_type}) failed in the MIL reference interpreter: {exc}"
        ) from exc
    if len(step.outputs) == 1 and not step.blocks:
        result = (result,)
    return tuple(finish(value, dtype, step.exact) for value, dtype in zip(result, step.info.out_dtypes, strict=True))
