"""Calibrated int8 weights in a quantized .tflite: GPTQ rounding of CONV_2D, DEPTHWISE_CONV_2D and FC weights.

ai-edge-quantizer rounds every weight to its nearest int8 level (per output channel, symmetric). On
EfficientNet-Lite0 that rounding alone costs more than all the int8 activations: fp32 compute with
those weights keeps 85 % top-1 agreement (17 dB output SNR). `int8_rounding.gptq_round` picks the levels
that minimise each layer's output error on the calibration data instead (same scales, same format);
the levels are rewritten in place in the quantized flatbuffer, before bias correction, which then
removes what mean shift is left.

`weight_inputs` tells the calibration pass (`calibration.py`) which float tensors to collect input
moments for and how each op reads them (TFLite kernels and padding, converted to torch layout).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mobex.quantize.rounding import ConvGeometry, InputMoments, gptq_round, output_error
from mobex.quantize.tflite.graph import WEIGHTED_OPS, OpInfo, TfliteGraph, stored_weight, writable_tensor


@dataclass(frozen=True)
class RoundedOp:
    op: str  # OpInfo.label
    error_ratio: float  # layer output error after / before (calibration data)


def weight_inputs(float_graph: TfliteGraph) -> dict[str, tuple[str, ConvGeometry]]:
    """op scope -> (name of its float input tensor, how the op reads it) for every weighted op GPTQ can round."""
    out = {}
    for op in float_graph.ops:
        if op.kind not in WEIGHTED_OPS or len(op.inputs) < 2:
            continue
        weight = float_graph.tensors[op.inputs[1]]
        x = float_graph.tensors[op.inputs[0]]
        geometry = _geometry(op, weight.shape, x.shape)
        if geometry is not None:
            out[op.scope] = (x.name, geometry)
    return out


# What GPTQ chose for one op: (op scope, its weight scales, its nearest-rounded levels) -> the levels GPTQ
# chose and their error ratio, or None when GPTQ was no better. Those inputs decide the result, so a candidate
# build of the int8 search reuses it instead of running GPTQ again (~6 s per build on EfficientNet-Lite0).
GptqCache = dict[tuple[str, bytes, bytes], "tuple[np.ndarray, RoundedOp] | None"]


def round_weights(
    model: bytearray,
    float_graph: TfliteGraph,
    moments: dict[str, InputMoments],
    graph: TfliteGraph | None = None,
    cache: GptqCache | None = None,
) -> list[RoundedOp]:
    """Rewrite, in place, the int8 weights of the quantized `model` with GPTQ levels (kept only when better).

    `graph`: `model` parsed, when the caller has it (the levels are read from `model` itself). `cache`: what
    earlier calls chose, for callers that quantize the same float model many times (see `GptqCache`)."""
    graph = graph if graph is not None else TfliteGraph(model)
    users = graph.buffer_users
    done = []
    for op in graph.ops:
        stats = moments.get(op.scope)
        if op.kind not in WEIGHTED_OPS or stats is None or len(op.inputs) < 2:
            continue
        weight = graph.tensors[stored_weight(graph, op)]
        float_op = float_graph.op_by_scope(op.scope)
        if not weight.is_int8 or weight.scales is None or float_op is None or users.get(weight.buffer, 0) > 1:
            continue
        float_weight = float_graph.constant(float_op.inputs[1])
        if float_weight is None or float_weight.shape != weight.shape:
            continue
        stored = writable_tensor(model, weight.index, np.int8).reshape(weight.shape)
        key = (op.scope, weight.scales.tobytes(), stored.tobytes())
        if cache is None or key not in cache:
            chosen = _gptq_levels(op, float_weight, stored, weight.scales, stats)
            if cache is not None:
                cache[key] = chosen
        else:
            chosen = cache[key]
        if chosen is not None:
            stored[...] = chosen[0]
            done.append(chosen[1])
    return done


def _gptq_levels(
    op: OpInfo, float_weight: np.ndarray, stored: np.ndarray, scales: np.ndarray, stats: InputMoments
) -> tuple[np.ndarray, RoundedOp] | None:
    """GPTQ's levels for one op's weights (TFLite layout, int8) when they beat the stored ones, else None."""
    to_torch, from_torch = _layouts(op.kind)
    w = to_torch(float_weight.astype(np.float64))
    levels = to_torch(stored.astype(np.float64))
    scale = _scales(scales, op.kind, w.shape)
    if scale is None:
        return None
    codes = gptq_round(w, scale, stats, qmin=-127, qmax=127)
    if codes is None:
        return None
    before = output_error(levels * scale, w, stats)
    after = output_error(codes * scale, w, stats)
    if not after < before:
        return None
    return from_torch(codes).astype(np.int8), RoundedOp(op.label, float(after / before) if before > 0 else 1.0)


def _layouts(kind: str):  # noqa: ANN202 - (to torch layout, back to TFLite layout)
    if kind == "CONV_2D":  # [O, H, W, I] <-> [O, I, H, W]
        return (lambda a: np.transpose(a, (0, 3, 1, 2))), (lambda a: np.transpose(a, (0, 2, 3, 1)))
    if kind == "DEPTHWISE_CONV_2D":  # [1, H, W, C] <-> [C, 1, H, W]
        return (lambda a: np.transpose(a, (3, 0, 1, 2))), (lambda a: np.transpose(a, (1, 2, 3, 0)))
    return (lambda a: a), (lambda a: a)  # FULLY_CONNECTED [O, I]


def _scales(scales: np.ndarray, kind: str, torch_shape: tuple[int, ...]) -> np.ndarray | None:
    """Per-output-channel scales shaped to broadcast over the torch-layout weight."""
    s = np.asarray(scales, dtype=np.float64)
    if s.size == 1:
        return s.reshape((1,) * len(torch_shape))
    if s.size != torch_shape[0]:
        return None
    return s.reshape((-1,) + (1,) * (len(torch_shape) - 1))


def _geometry(op: OpInfo, weight_shape: tuple[int, ...], x_shape: tuple[int, ...]) -> ConvGeometry | None:
    if op.kind == "FULLY_CONNECTED":
        return ConvGeometry() if len(weight_shape) == 2 else None
    if op.options is None or len(weight_shape) != 4 or len(x_shape) != 4:
        return None
    opt = op.options
    kh, kw = int(weight_shape[1]), int(weight_shape[2])
    sh, sw = int(opt.strideH), int(opt.strideW)
    dh, dw = int(getattr(opt, "dilationHFactor", 1) or 1), int(getattr(opt, "dilationWFactor", 1) or 1)
    channels = int(x_shape[3])
    if op.kind == "DEPTHWISE_CONV_2D":
        if int(weight_shape[3]) != channels:  # depth multiplier > 1
            return None
        groups = channels
    else:
        if channels % int(weight_shape[3]):
            return None
        groups = channels // int(weight_shape[3])
    pads = ((0, 0), (0, 0))
    if int(opt.padding) == 0:  # SAME
        h, w = int(x_shape[1]), int(x_shape[2])
        ph = max((-(-h // sh) - 1) * sh + (kh - 1) * dh + 1 - h, 0)
        pw = max((-(-w // sw) - 1) * sw + (kw - 1) * dw + 1 - w, 0)
        pads = ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2))
    return ConvGeometry((kh, kw), (sh, sw), (dh, dw), pads, groups)


# A fallback op keeps int8 weights (float compute) only when they are big and int8 holds them: more than
# `LARGE_WEIGHT_SHARE` of the model's weight elements (float32 would cost real bytes), and round-to-nearest int8
# alone costs less than `SAFE_WEIGHT_ERROR` of the op's output energy on calibration data (-30 dB). Small
# weights stay float: cheap, and the sensitive early layers of a CNN are sensitive to their weights too.
LARGE_WEIGHT_SHARE = 0.01
SAFE_WEIGHT_ERROR = 1e-3


def int8_safe_weights(float_graph: TfliteGraph, moments: dict[str, InputMoments]) -> set[str]:
    """Scopes of weighted ops that keep int8 weights when they fall back to float compute (see above)."""
    weights = {}
    for op in float_graph.ops:
        if op.kind in WEIGHTED_OPS and len(op.inputs) > 1:
            weight = float_graph.constant(op.inputs[1])
            if weight is not None:
                weights[op.scope] = (op, weight)
    total = sum(w.size for _, w in weights.values())
    safe = set()
    for scope, (op, weight) in weights.items():
        stats = moments.get(scope)
        if stats is None or weight.size <= LARGE_WEIGHT_SHARE * total:
            continue
        to_torch, _ = _layouts(op.kind)
        w = to_torch(weight.astype(np.float64))
        scale = np.abs(w).reshape(w.shape[0], -1).max(1).reshape((-1,) + (1,) * (w.ndim - 1)) / 127
        levels = np.clip(np.round(w / np.where(scale > 0, scale, 1.0)), -127, 127)
        energy = output_error(np.zeros_like(w), w, stats)
        if energy > 0 and output_error(levels * scale, w, stats) <= SAFE_WEIGHT_ERROR * energy:
            safe.add(scope)
    return safe
