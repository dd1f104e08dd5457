"""PyTorch -> ExecuTorch `.pte` through torch.export and `to_edge_transform_and_lower` with XNNPACK.

The flow (ExecuTorch's own): `torch.export.export` (non-strict) of the model wrapped to return its
outputs flattened in torch output order; `to_edge_transform_and_lower` with the XNNPACK partitioner,
which hands every subgraph XNNPACK supports to it (float or, after PT2E, int8) and leaves the rest to
ExecuTorch's portable kernels; `to_executorch` (memory planning, serialization). `lower_program` is
the part after torch.export, shared with the int8 quantizer (mobex.quantize.executorch), which exports
its PT2E-converted model itself.

Names and order (the contract the runner, manifest and apps rely on):
- Inputs: `example_inputs` keys, in call order; the program's `forward` takes them positionally in
  that order. Outputs: the model's return value flattened in torch output order
  (`flatten_outputs`), named `output_names` or `output_0 .. output_{N-1}`.
- A `.pte` has no I/O names, so both lists are stored in the program as constant methods
  (`mobex_input_names`, `mobex_output_names`, see mobex.runtime.executorch), which cost a few bytes and
  which apps can ignore.
- dtypes: ExecuTorch keeps 64-bit integer I/O as int64 (litert-torch stores int32); XNNPACK takes no
  int64, so ops on int64 tensors (embedding lookups, argmax) run on the portable kernels. A note says so.

Before the file is moved into place, every operator the program calls outside a delegate is checked
against the kernels ExecuTorch's runtime has, and the method is loaded once: a program the runtime
cannot run is a ConversionError naming the operator, not a file that fails later on the phone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobex.artifacts import ExportedVariant, Platform, TensorSpec, path_size
from mobex.converters.tflite import _describe, _output_names  # shared naming rules of every converter
from mobex.errors import ConversionError, UsageError
from mobex.files import write_atomic
from mobex.runtime.executorch import (
    INPUT_NAMES_METHOD,
    METHOD,
    OUTPUT_NAMES_METHOD,
    PteIO,
    executorch_version,
    load_program,
    read_pte_io,
    require_executorch,
)
from mobex.runtime.torch_model import flatten_outputs


@dataclass(frozen=True)
class Delegation:
    """Which ops of the lowered program a backend took (from ExecuTorch's `get_delegation_info`)."""

    backend: str
    partitions: int
    delegated: dict[str, int] = field(default_factory=dict)  # op type -> occurrences inside partitions
    not_delegated: dict[str, int] = field(default_factory=dict)  # op type -> occurrences outside (portable kernels)

    def summary(self) -> str:
        inside = sum(self.delegated.values())
        text = f"{self.backend}: {self.partitions} partition(s) with {inside} op(s)"
        if not self.not_delegated:
            return text + "; every op delegated"
        outside = ", ".join(f"{op} x{n}" for op, n in sorted(self.not_delegated.items()))
        return f"{text}; not delegated (portable kernels): {outside}"


@dataclass(frozen=True)
class XnnpackDelegate:
    """ExecuTorch's CPU backend: fp32, or int8 after PT2E. Its `.pte` runs on Android and iOS CPUs alike."""

    id: str = "XnnpackBackend"
    platform: Platform = "android"
    precision: str = "fp32"
    runs_here: bool = True  # ExecuTorch's Python runtime on Linux has this backend

    def partitioner(self) -> Any:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

        return XnnpackPartitioner()


@dataclass(frozen=True)
class CoreMLDelegate:
    """ExecuTorch's Core ML backend (iOS): the partition becomes an ML program that Core ML runs on the phone.

    coremltools converts it on Linux (with mobex's shims for torch 2.13, mobex.converters.coreml_shims), but
    ExecuTorch's Linux runtime has no Core ML backend: the program cannot be loaded here. Its Core ML part is
    validated by extracting the ML program and running it in mobex's MIL reference interpreter
    (`mobex.runtime.executorch.CoreMLDelegateRunner`)."""

    minimum_deployment_target: str = "iOS17"
    precision: str = "fp16"  # Core ML compute precision: "fp16" (its default) or "fp32"
    id: str = "CoreMLBackend"
    platform: Platform = "ios"
    runs_here: bool = False

    def partitioner(self) -> Any:
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        from mobex.converters.coreml import resolve_target
        from mobex.converters.coreml_shims import install_shims

        if self.precision not in _CT_PRECISION:
            raise UsageError(f"Core ML precision must be one of {', '.join(_CT_PRECISION)}, not {self.precision!r}")
        install_shims()
        specs = CoreMLBackend.generate_compile_specs(
            minimum_deployment_target=resolve_target(self.minimum_deployment_target),
            compute_precision=getattr(ct.precision, _CT_PRECISION[self.precision]),
        )
        return CoreMLPartitioner(compile_specs=specs)


_CT_PRECISION = {"fp16": "FLOAT16", "fp32": "FLOAT32"}
XNNPACK = XnnpackDelegate()


@dataclass(frozen=True)
class LoweredProgram:
    """A serialized `.pte` and what its lowering delegated."""

    buffer: bytes
    delegation: Delegation
    delegate: XnnpackDelegate | CoreMLDelegate = XNNPACK


def convert_executorch(
    model: Any,
    example_inputs: dict[str, Any],
    out_path: Path,
    *,
    output_names: list[str] | None = None,
    delegate: XnnpackDelegate | CoreMLDelegate = XNNPACK,
) -> ExportedVariant:
    """Convert `model` (put in eval mode) to a float `.pte` at `out_path`, written atomically.

    `example_inputs` maps each input name to an example tensor, in call order (`model(*values)`).
    `delegate`: XNNPACK (Android, fp32) or `CoreMLDelegate(...)` (iOS, fp16 or fp32 compute); the
    variant's platform and quantization label come from it. Raises UsageError for bad arguments or a
    missing `executorch` package, and ConversionError (naming the failing op when torch.export or
    ExecuTorch does) when the model cannot be converted."""
    require_executorch("the ExecuTorch converter")
    start = time.perf_counter()
    names, flat = check_example(model, example_inputs)
    out_names = _output_names(output_names, len(flat))
    program = export_flat(model, example_inputs)
    lowered = lower_program(program, names, out_names, delegate)
    precision = delegate.precision
    return write_variant(lowered, out_path, example_inputs, flat, out_names, quantization=precision, start=start)


def check_example(model: Any, example_inputs: dict[str, Any]) -> tuple[list[str], list[Any]]:
    """(input names, flattened eager outputs): an eager pass first, since a shape or dtype mistake reads
    better here than inside torch.export, and it says how many outputs to name."""
    import torch

    names = list(example_inputs)
    if not names:
        raise UsageError("convert_executorch needs at least one example input", hint="declare [[inputs]] in the recipe")
    for name, value in example_inputs.items():
        if not isinstance(name, str) or not name:
            raise UsageError(f"input names must be non-empty strings, got {name!r}")
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"example input {name!r} must be a torch.Tensor, got {type(value).__name__}")
    model.eval()
    try:
        with torch.no_grad():
            flat = flatten_outputs(model(*example_inputs.values()))
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported the same way
        raise ConversionError(
            f"the model fails on the example inputs {_describe(example_inputs)}: {type(e).__name__}: {e}",
            hint="check the shapes, dtypes and call order of [[inputs]] in the recipe",
        ) from e
    if not flat:
        raise ConversionError("the model returned no tensors, so there is nothing to export")
    return names, flat


def _make_flat_outputs() -> type:
    import torch

    class FlatOutputs(torch.nn.Module):
        """Positional inputs in call order, a tuple of the model's tensors in torch output order."""

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return tuple(flatten_outputs(self.model(*args)))

    return FlatOutputs


def flat_outputs(model: Any) -> Any:
    """`model` wrapped so that it returns a flat tuple of tensors (built lazily: no torch import here)."""
    return _make_flat_outputs()(model).eval()


def export_flat(model: Any, example_inputs: dict[str, Any]) -> Any:
    """torch.export (non-strict) of `flat_outputs(model)` on the example inputs; ConversionError on failure."""
    import torch

    try:
        with torch.no_grad():
            return torch.export.export(flat_outputs(model), tuple(example_inputs.values()), strict=False)
    except Exception as e:  # noqa: BLE001 - torch.export raises many types (UserError, guards, ...)
        raise _failure("torch.export", e) from e


def lower_program(
    exported: Any, input_names: list[str], output_names: list[str], delegate: XnnpackDelegate | CoreMLDelegate = XNNPACK
) -> LoweredProgram:
    """An ExportedProgram lowered with the delegate's partitioner and serialized, with its delegation info
    and the I/O names stored as constant methods; its global average pools are rewritten in place first
    (`keepdim_means`). ConversionError when ExecuTorch cannot lower it or its runtime has no kernel for an
    op left outside the delegate."""
    from executorch.exir import to_edge_transform_and_lower

    methods = {INPUT_NAMES_METHOD: list(input_names), OUTPUT_NAMES_METHOD: list(output_names)}
    partitioner = delegate.partitioner()
    try:
        keepdim_means(exported)
        edge = to_edge_transform_and_lower(exported, partitioner=[partitioner], constant_methods=methods)
        delegation = delegation_of(edge.exported_program().graph_module, delegate.id)
        manager = edge.to_executorch()
    except Exception as e:  # noqa: BLE001 - SpecViolationError, RuntimeError, partitioner assertions
        raise _failure("ExecuTorch lowering", e) from e
    _check_kernels(manager.executorch_program)
    return LoweredProgram(buffer=bytes(manager.buffer), delegation=delegation, delegate=delegate)


def keepdim_means(exported: Any) -> None:
    """Rewrite a global average pool `x.mean(dim=(2, 3))` of a 4-D tensor as `mean(keepdim=True)` + `view`, in place.

    XNNPACK's partitioner takes `mean.dim` only with keepdim=True, so the usual pooling before a classifier
    ran on ExecuTorch's portable kernels and split the graph into two XNNPACK partitions. Measured on
    digits_cnn (1 thread): int8 0.166 -> 0.074 ms, fp32 0.34 -> 0.25 ms, one partition. Same function."""
    import torch

    aten = torch.ops.aten
    gm = exported.graph_module
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.mean.dim:
            continue
        x, dims = node.args[0], node.args[1]
        val = x.meta.get("val")
        keepdim = len(node.args) > 2 and bool(node.args[2])
        if keepdim or node.kwargs or val is None or val.dim() != 4 or sorted(d % 4 for d in dims) != [2, 3]:
            continue
        with gm.graph.inserting_before(node):
            pooled = gm.graph.call_function(aten.mean.dim, (x, dims, True))
            flat = gm.graph.call_function(aten.view.default, (pooled, list(node.meta["val"].shape)))
        with val.fake_mode:
            pooled.meta = {**node.meta, "val": aten.mean.dim(val, dims, True)}
        flat.meta = dict(node.meta)
        node.replace_all_uses_with(flat)
        gm.graph.erase_node(node)
    gm.recompile()


def delegation_of(graph_module: Any, backend: str) -> Delegation:
    """What the partitioner delegated, from ExecuTorch's `get_delegation_info` (graph plumbing left out)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(graph_module)
    delegated, outside = {}, {}
    for op, counts in info.delegation_by_operator.items():
        if op in ("getitem", "alloc"):
            continue
        if counts.delegated:
            delegated[op] = counts.delegated
        if counts.non_delegated:
            outside[op] = counts.non_delegated
    return Delegation(backend, info.num_delegated_subgraphs, delegated, outside)


def _check_kernels(program: Any) -> None:
    """ConversionError naming every operator `forward` calls that the runtime has no kernel for."""
    from executorch.runtime import Runtime

    registered = Runtime.get().operator_registry.operator_names
    plan = next(p for p in program.execution_plan if p.name == METHOD)
    wanted = {f"{op.name}.{op.overload}" if op.overload else op.name for op in plan.operators}
    missing = sorted(wanted - set(registered))
    if missing:
        raise ConversionError(
            f"the ExecuTorch runtime has no kernel for {', '.join(missing)} (the op is not delegated to "
            "XNNPACK, and ExecuTorch's portable kernels do not include it)",
            hint=_OP_HINT,
        )


def write_variant(
    lowered: LoweredProgram,
    out_path: Path,
    example_inputs: dict[str, Any],
    flat: list[Any],
    output_names: list[str],
    *,
    quantization: str,
    start: float,
    notes: list[str] | None = None,
) -> ExportedVariant:
    """Write the `.pte` atomically once the runtime has loaded it from memory (its method too, when the
    delegate runs here), and describe it as an ExportedVariant for the delegate's platform."""
    io = _loaded_io(lowered.buffer, load_method=lowered.delegate.runs_here)
    out_path = Path(out_path)
    write_atomic(out_path, lowered.buffer)
    all_notes = [f"executorch {executorch_version()}", lowered.delegation.summary(), *(notes or [])]
    all_notes += _dtype_notes(io.inputs, list(example_inputs.values()), "input")
    all_notes += _dtype_notes(io.outputs, flat, "output")
    return ExportedVariant(
        target="executorch",
        platform=lowered.delegate.platform,
        quantization=quantization,
        path=out_path,
        inputs=io.inputs,
        outputs=io.outputs,
        size_bytes=path_size(out_path),
        seconds=time.perf_counter() - start,
        notes=all_notes,
    )


def _loaded_io(buffer: bytes, *, load_method: bool) -> PteIO:
    """Load the program (and its method: missing kernels for a dtype show up there) in the runtime."""
    try:
        program = load_program(buffer)
        if load_method:
            program.load_method(METHOD)
    except Exception as e:  # noqa: BLE001 - the runtime raises RuntimeError with an error code
        raise ConversionError(
            f"the ExecuTorch runtime cannot load the converted program: {e}",
            hint="its log above names the operator or delegate that failed; " + _OP_HINT,
        ) from e
    return read_pte_io(program)


def _dtype_notes(specs: list[TensorSpec], tensors: list[Any], role: str) -> list[str]:
    notes = []
    for spec, value in zip(specs, tensors, strict=True):
        torch_dtype = str(value.dtype).removeprefix("torch.")
        if torch_dtype != spec.dtype:
            notes.append(f"{role} {spec.name!r} is {spec.dtype} in the .pte ({torch_dtype} in torch)")
        elif spec.dtype == "int64":
            notes.append(f"{role} {spec.name!r} stays int64 (ExecuTorch has int64 kernels; XNNPACK does not take it)")
    return notes


_OP_HINT = (
    "replace the op with one in ExecuTorch's core ATen opset (https://pytorch.org/docs/stable/torch.compiler_ir.html), "
    "or move it out of the exported module (pre/post-processing in the app)"
)
_EXPORT_HINT = (
    "reproduce with torch.export.export(model, args, strict=False); data-dependent shapes and "
    "Python control flow on tensor values are the usual causes"
)
_OP_PATTERNS = (
    r"Operator torch\._ops\.([\w.]+) is not in Core ATen",
    r"<EdgeOpOverload: ([\w.]+)>",
    r"kernel '([\w:.]+)' not found",
    r"target=torch\.ops\.([\w.]+)",
)


def _failure(stage: str, e: BaseException) -> ConversionError:
    """One paragraph: the stage, the op when the message names one, and the first lines of the error."""
    text = str(e)
    op = next((m.group(1) for p in _OP_PATTERNS if (m := re.search(p, text))), None)
    first = " ".join(line.strip() for line in text.strip().splitlines()[:3] if line.strip())
    if len(first) > 400:
        first = first[:400] + "..."
    where = f" at op {op}" if op else ""
    message = f"{stage} could not convert the model{where}: {type(e).__name__}: {first or '(no message)'}"
    return ConversionError(message, hint=_OP_HINT if op else _EXPORT_HINT)
