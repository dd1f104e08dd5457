"""Calibrated weight compression for Core ML programs: GPTQ rounding and bias correction, as a MIL graph pass.

coremltools rounds each weight to its nearest int8 level (or palette entry), which is what makes
EfficientNet-Lite0's `int8-weights` lose 14 points of top-1 agreement (fp32 compute shows the same loss,
so neither Core ML's format nor fp16 is the cause; see `rounding.py`). Given calibration data,
mobex keeps coremltools' compressed format, scales and palettes, and replaces only the stored integers:

1. `collect_moments` runs the fp16/fp32 base program in the MIL reference interpreter on calibration
   samples, with the input of every conv/linear added as a program output (as coremltools'
   ModelDebugger does), and accumulates each op's input second moments H and mean input.
2. `refine_weights` rewrites, in the compressed program, every `constexpr_affine_dequantize` /
   `constexpr_blockwise_shift_scale` (linear int8) and `constexpr_lut_to_dense` (palette) weight of a
   conv/linear: the integers / palette indices are chosen by GPTQ (`int8_rounding`), kept only when
   they lower the layer's measured output error; then the op's bias absorbs the mean output shift
   the compressed weights still cause (bias correction). The rest of the program is untouched.

The result is an ordinary compressed program (same ops, same sizes) that coremltools or Core ML loads.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mobex.errors import ConversionError
from mobex.quantize.rounding import (
    ConvGeometry,
    InputMoments,
    gptq_palettize,
    gptq_round,
    mean_output_error,
    output_error,
)

WEIGHTED_OPS = ("conv", "linear")
LINEAR_CONSTEXPR = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale")
LUT_CONSTEXPR = ("constexpr_lut_to_dense",)


@dataclass
class LayerStats:
    """What refining one conv/linear op needs: its float weight, input moments and which input it reads."""

    weight: np.ndarray  # float32, MIL/torch layout
    moments: InputMoments
    input_name: str


@dataclass
class Refinement:
    """What `refine_weights` did, for the variant's notes."""

    rounded: list[str] = field(default_factory=list)  # ops whose integers/indices GPTQ replaced
    kept: list[str] = field(default_factory=list)  # ops left with coremltools' rounding (GPTQ no better / too few rows)
    bias_corrected: int = 0
    samples: int = 0
    error_before: float = 0.0  # sum over layers of the relative output error, before and after
    error_after: float = 0.0

    def summary(self) -> str:
        text = (
            f"calibrated rounding (GPTQ) of {len(self.rounded)} weight tensor(s), bias correction of "
            f"{self.bias_corrected} op(s), from {self.samples} calibration samples"
        )
        if self.kept:
            text += f"; {len(self.kept)} kept round-to-nearest"
        if self.error_before > 0:
            text += f"; summed layer output error x{self.error_after / self.error_before:.2f}"
        return text


def run_with_outputs(
    package: Path,
    names: list[str],
    feeds: list[dict[str, np.ndarray]],
    visit: Callable[[str, np.ndarray], None],
) -> None:
    """Run the saved program on `feeds` in the MIL reference interpreter and `visit(name, value)` for
    every feed value and every intermediate tensor in `names` (a copy of the program with those tensors
    added as outputs, what coremltools' ModelDebugger builds for `predict`)."""
    import coremltools as ct
    from coremltools.optimize.coreml.experimental._model_debugger import ModelDebugger

    from mobex.runtime.mil.interpreter import MilReferenceRunner

    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    debugger = ModelDebugger(mlmodel)
    spec = mlmodel.get_spec()
    outputs = {o.name for o in spec.description.output}
    inputs = {i.name for i in spec.description.input}
    block = ModelDebugger.get_any_block(ModelDebugger.get_model_info(mlmodel)).name
    function = spec.mlProgram.functions[next(iter(spec.mlProgram.functions))]
    body = function.block_specializations[block]
    wanted = set()
    for name in dict.fromkeys(names):
        if name in outputs or name in inputs:
            wanted.add(name)
            continue
        kind = ModelDebugger.get_output_feature_type(name, debugger.block_info.operations)
        if kind is None:  # bool and other tensors that cannot be model outputs
            continue
        body.outputs.append(name)
        feature = spec.description.output.add()
        feature.name = name
        feature.type.multiArrayType.dataType = kind
        wanted.add(name)
    tmp = Path(tempfile.mkdtemp(prefix="mobex-probe-"))
    try:
        probe = tmp / "probe.mlpackage"
        ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True).save(str(probe))
        runner = MilReferenceRunner(probe)
        unsupported = runner.unsupported_ops()
        if unsupported:
            raise ConversionError(
                f"calibration: the MIL reference interpreter cannot run {', '.join(unsupported)}",
                hint="drop the calibrated Core ML variants for this model, or calibrate on macOS",
            )
        for feed in feeds:
            for name, value in feed.items():
                visit(name, np.asarray(value))
            for out, value in zip(runner.outputs, runner.run(feed), strict=True):
                if out.name in wanted and out.name not in inputs:
                    visit(out.name, np.asarray(value))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def collect_moments(package: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, LayerStats]:
    """Input moments of every conv/linear with a constant weight of the program, keyed by op name."""
    from mobex.runtime.mil.program import load_pymil_program

    prog, _, error = load_pymil_program(Path(package))
    if prog is None:
        raise ConversionError(f"coremltools cannot load {package}: {error}")
    stats: dict[str, LayerStats] = {}
    by_input: dict[str, list[LayerStats]] = {}
    for op in prog.functions["main"].operations:
        if op.op_type not in WEIGHTED_OPS or op.weight.val is None:
            continue
        geometry = _geometry(op)
        if geometry is None:
            continue
        entry = LayerStats(np.asarray(op.weight.val, dtype=np.float32), InputMoments(geometry), op.x.name)
        stats[op.name] = entry
        by_input.setdefault(op.x.name, []).append(entry)

    def visit(name: str, value: np.ndarray) -> None:
        for entry in by_input.get(name, ()):
            entry.moments.add(value.astype(np.float32))

    run_with_outputs(Path(package), list(by_input), feeds, visit)
    return {name: s for name, s in stats.items() if s.moments.samples}


def _geometry(op: Any) -> ConvGeometry | None:
    """Kernel, strides, padding and groups of a MIL conv (None for layouts GPTQ does not handle)."""
    from mobex.runtime.mil.ops_common import spatial_pads

    if op.op_type == "linear":
        return ConvGeometry()
    weight_shape = tuple(int(d) for d in op.weight.shape)
    x_shape = op.x.shape
    if len(weight_shape) != 4 or x_shape is None or len(x_shape) != 4 or not all(isinstance(d, int) for d in x_shape):
        return None
    kernel = weight_shape[2:]
    strides = tuple(int(v) for v in op.strides.val) if op.strides is not None else (1, 1)
    dilations = tuple(int(v) for v in op.dilations.val) if op.dilations is not None else (1, 1)
    pad_type = str(op.pad_type.val) if op.pad_type is not None else "valid"
    custom = [int(v) for v in op.pad.val] if op.pad is not None else None
    pads = spatial_pads(pad_type, tuple(x_shape[2:]), kernel, strides, dilations, custom)
    groups = int(op.groups.val) if op.groups is not None else 1
    return ConvGeometry(kernel, strides, dilations, tuple(pads), groups)


def refine_weights(
    mlmodel: Any, stats: dict[str, LayerStats], *, bias_correction: bool = True
) -> tuple[Any, Refinement]:
    """A copy of the compressed `mlmodel` with GPTQ-rounded weights and corrected biases (module docstring)."""
    from coremltools.converters.mil.frontend.milproto import load as milproto_to_pymil
    from coremltools.converters.mil.mil.passes.graph_pass import AbstractGraphPass
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils

    report = Refinement(samples=max((s.moments.samples for s in stats.values()), default=0))

    class _Refine(AbstractGraphPass):
        def apply(self, prog: Any) -> None:
            for function in prog.functions.values():
                with function:
                    for op in list(function.operations):
                        if op.op_type in WEIGHTED_OPS and op.name in stats:
                            _refine_op(op, stats[op.name], bias_correction, report)

    passes = [_Refine(), PASS_REGISTRY["common::dead_code_elimination"]]
    spec_version = mlmodel.get_spec().specificationVersion
    try:
        refined = model_utils._apply_graph_pass(
            mlmodel,
            passes,
            spec_version=spec_version,
            pymil_load_func=milproto_to_pymil.load,
            skip_model_load=True,
        )
    except Exception as exc:  # noqa: BLE001 - report coremltools' reason
        raise ConversionError(f"could not rewrite the compressed weights: {exc}") from exc
    return refined, report


def _refine_op(op: Any, layer: LayerStats, bias_correction: bool, report: Refinement) -> None:
    from coremltools.converters.mil import Builder as mb

    producer = op.weight.op
    if producer is None or not producer.op_type.startswith("constexpr_"):
        return
    if len(op.weight.child_ops) != 1 or tuple(op.weight.shape) != layer.weight.shape:
        return  # shared or reshaped weight: leave it alone
    weight = layer.weight
    new_weight = None
    if producer.op_type in LINEAR_CONSTEXPR:
        new_weight = _round_linear(producer, layer, op, report)
    elif producer.op_type in LUT_CONSTEXPR:
        new_weight = _round_lut(producer, layer, op, report)
    weight_var = new_weight if new_weight is not None else op.weight
    if new_weight is not None:
        decompressed = np.asarray(new_weight.op.materialized_val_inference(), dtype=np.float32)
    else:
        decompressed = np.asarray(producer.materialized_val_inference(), dtype=np.float32)
        if producer.op_type in LINEAR_CONSTEXPR + LUT_CONSTEXPR:
            report.kept.append(op.name)
    bias_var = op.bias if op.bias is not None else None
    if bias_correction:
        shift = mean_output_error(decompressed - weight, layer.moments)
        if shift is not None and np.all(np.isfinite(shift)):
            dtype = op.x.dtype
            from coremltools.converters.mil.mil import types

            np_dtype = types.nptype_from_builtin(dtype)
            old = np.zeros(weight.shape[0], np.float32) if op.bias is None else np.asarray(op.bias.val, np.float32)
            bias_var = mb.const(val=(old - shift).astype(np_dtype), before_op=op, name=op.name + "_bias_corrected")
            report.bias_corrected += 1
    if weight_var is op.weight and bias_var is op.bias:
        return
    kwargs = {name: var for name, var in op.inputs.items()}
    kwargs["weight"] = weight_var
    if bias_var is not None:
        kwargs["bias"] = bias_var
    rebuilt = getattr(mb, op.op_type)(**kwargs, before_op=op, name=op.outputs[0].name)
    op.enclosing_block.replace_uses_of_var_after_op(
        anchor_op=op, old_var=op.outputs[0], new_var=rebuilt, no_check_var_types=True, force_replace=True
    )
    op.enclosing_block.remove_ops([op])


def _round_linear(producer: Any, layer: LayerStats, op: Any, report: Refinement) -> Any | None:
    """GPTQ integers for a linear-quantized weight; a new constexpr var, or None to keep coremltools'."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    weight = layer.weight
    if producer.op_type == "constexpr_affine_dequantize":
        data = np.asarray(producer.quantized_data.val)
        scale = _expand(np.asarray(producer.scale.val, np.float64), data.shape, int(producer.axis.val))
        offset = _expand(np.asarray(producer.zero_point.val, np.float64), data.shape, int(producer.axis.val))
    else:
        data = np.asarray(producer.data.val)
        scale = _blocks(np.asarray(producer.scale.val, np.float64), data.shape)
        offset = None if producer.offset is None else _blocks(np.asarray(producer.offset.val, np.float64), data.shape)
    stored = producer.quantized_data if producer.op_type == "constexpr_affine_dequantize" else producer.data
    if not types.is_int(stored.dtype) or stored.dtype.get_bitwidth() > 8 or data.shape != weight.shape:
        return None
    # Sub-byte data (int4) is held in int8 arrays whose numpy dtype names the true type; keep that dtype.
    np_dtype = types.nptype_from_builtin(stored.dtype)
    bits = stored.dtype.get_bitwidth()
    # coremltools' symmetric modes leave out one end (int8: -127..127, uint8: 0..254); stay inside that
    # (asymmetric weights lose their extreme level at most; the error check below keeps the better rounding)
    top = 2 ** (bits - 1) - 1
    qmin, qmax = (0, 2 * top) if stored.dtype.is_unsigned() else (-top, top)
    codes = gptq_round(weight, scale, layer.moments, offset=offset, qmin=qmin, qmax=qmax)
    if codes is None:
        return None
    zero = 0.0 if offset is None else offset
    before = output_error((data.astype(np.float64) - zero) * scale, weight, layer.moments)
    after = output_error((codes - zero) * scale, weight, layer.moments)
    report.error_before += before / _energy(weight, layer)
    if not after < before:
        report.error_after += before / _energy(weight, layer)
        return None
    report.error_after += after / _energy(weight, layer)
    report.rounded.append(op.name)
    new_data = codes.astype(np_dtype)
    if producer.op_type == "constexpr_affine_dequantize":
        return mb.constexpr_affine_dequantize(
            quantized_data=new_data,
            zero_point=producer.zero_point,
            scale=producer.scale,
            axis=producer.axis,
            before_op=op,
            name=producer.name + "_gptq",
        )
    kwargs = {"data": new_data, "scale": producer.scale}
    if producer.offset is not None:
        kwargs["offset"] = producer.offset
    return mb.constexpr_blockwise_shift_scale(**kwargs, before_op=op, name=producer.name + "_gptq")


def _round_lut(producer: Any, layer: LayerStats, op: Any, report: Refinement) -> Any | None:
    """GPTQ palette indices for a palettized weight (per-tensor or per-grouped-channel scalar palettes)."""
    from coremltools.converters.mil import Builder as mb

    weight = layer.weight
    inputs = producer.inputs
    if "shape" in inputs:  # iOS16 form: one flat palette, bit-packed indices
        lut = np.asarray(producer.lut.val, np.float64).reshape(-1)
        indices = np.asarray(producer.materialized_val_inference())  # dense values, not indices
        rows = np.broadcast_to(lut, (weight.shape[0], lut.size))
        codes = gptq_palettize(weight, rows, layer.moments)
        if codes is None:
            return None
        before = output_error(indices.astype(np.float64), weight, layer.moments)
        dense = lut[codes]
        after = output_error(dense, weight, layer.moments)
        report.error_before += before / _energy(weight, layer)
        if not after < before:
            report.error_after += before / _energy(weight, layer)
            return None
        report.error_after += after / _energy(weight, layer)
        report.rounded.append(op.name)
        packed = _pack_bits(codes.reshape(-1), int(np.log2(lut.size)))
        return mb.constexpr_lut_to_dense(
            indices=packed, lut=producer.lut, shape=producer.shape, before_op=op, name=producer.name + "_gptq"
        )
    lut = np.asarray(producer.lut.val, np.float64)  # iOS18: [*groups, K, vector]
    indices = np.asarray(producer.indices.val)
    if lut.shape[-1] != 1 or indices.shape != weight.shape:
        return None  # vector palettes: not handled
    groups = lut.shape[: indices.ndim]
    if any(g not in (1, n) and n % g for g, n in zip(groups, indices.shape, strict=True)):
        return None
    if any(g != 1 for g in groups[1:]):
        return None  # palettes grouped along input channels: not handled
    per_row = np.repeat(lut.reshape(groups[0], -1), weight.shape[0] // groups[0], axis=0)  # [O, K]
    codes = gptq_palettize(weight, per_row, layer.moments)
    if codes is None:
        return None
    rows = np.arange(weight.shape[0]).reshape((-1,) + (1,) * (weight.ndim - 1))
    before = output_error(per_row[rows, indices], weight, layer.moments)
    after = output_error(per_row[rows, codes], weight, layer.moments)
    report.error_before += before / _energy(weight, layer)
    if not after < before:
        report.error_after += before / _energy(weight, layer)
        return None
    report.error_after += after / _energy(weight, layer)
    report.rounded.append(op.name)
    return mb.constexpr_lut_to_dense(
        indices=codes.astype(indices.dtype),
        lut=producer.lut,
        vector_axis=producer.vector_axis,
        before_op=op,
        name=producer.name + "_gptq",
    )


def _energy(weight: np.ndarray, layer: LayerStats) -> float:
    """The layer's output energy sum ||x W||^2 over calibration patches (to make errors relative)."""
    energy = output_error(np.zeros_like(weight), weight, layer.moments)
    return energy if energy > 0 else 1.0


def _expand(param: np.ndarray, shape: tuple[int, ...], axis: int) -> np.ndarray:
    """constexpr_affine_dequantize's scale/zero_point (scalar or vector along `axis`) as a broadcastable array."""
    if param.ndim == 0 or param.size == 1:
        return param.reshape((1,) * len(shape))
    view = [1] * len(shape)
    view[axis % len(shape)] = -1
    return param.reshape(view)


def _blocks(param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """constexpr_blockwise_shift_scale's per-block scale/offset repeated to the data's shape."""
    for axis, (n, b) in enumerate(zip(shape, param.shape, strict=True)):
        if b != n:
            param = np.repeat(param, n // b, axis=axis)
    return param


def _pack_bits(values: np.ndarray, nbits: int) -> np.ndarray:
    """Unsigned `nbits`-wide values packed LSB-first into uint8 (the iOS16 constexpr_lut_to_dense layout)."""
    bits = ((values[:, None].astype(np.uint16) >> np.arange(nbits, dtype=np.uint16)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")
