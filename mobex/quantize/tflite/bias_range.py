"""Int32 biases that fit: raise the weight scale of channels whose bias would overflow int32.

A static int8 CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED stores its bias as int32 at the scale
`input step x weight scale` of its output channel. A dead channel (BatchNorm-folded weights near zero,
a large bias) gets a tiny per-channel weight scale, and its bias in those units does not fit in int32.
ai-edge-quantizer clips it to -2^31; the kernel then adds the accumulator to -2^31, the int32 sum wraps
around, and the channel outputs a large wrong constant instead of relu6(bias) = 0.

Found on EfficientNet-Lite0: two dead channels of block 2's expand convolution (weights 3e-7, bias -2.6)
came out of LiteRT's built-in kernels as 1.48 instead of 0. There the next depthwise layer's weights for
those channels are near zero too, so the output barely moved (87 channels in 28 ops widened; full-int8
output SNR 22.1 dB before and after, on calibration data). In a model whose next layer reads such a
channel the error reaches the output (tests/quantize/tflite/test_bias_range.py: 23 dB without this, 47 dB
with it, on XNNPACK and the built-in kernels alike). TFLite's own converter has the same guard
(`AdjustWeightsForBiasScale`): make the weight scale large enough that the bias fits with room for the
accumulator, and round that channel's weights again at the new scale.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from mobex.quantize.tflite.graph import WEIGHTED_OPS, TfliteGraph, stored_weight, writable_tensor

_INT32_MAX = 2**31 - 1


@dataclass(frozen=True)
class WidenedChannels:
    op: str  # OpInfo.label
    channels: list[int]


def fit_int32_biases(
    model: bytearray, float_graph: TfliteGraph, graph: TfliteGraph | None = None
) -> list[WidenedChannels]:
    """Rewrite, in place, the weight scale, weight levels and int32 bias of every channel whose bias would not
    fit in int32 next to the largest possible accumulator; the float weights and biases come from the float
    graph the model was quantized from (the int8 model's own bias may already be clipped).

    `graph` is `model` parsed (parsed here when not given); the scales it holds are updated with the model's,
    so the caller can pass it on to the next rewrite instead of parsing the model again."""
    from ai_edge_litert import schema_py_generated as schema

    graph = graph if graph is not None else TfliteGraph(model)
    tensors = schema.Model.GetRootAs(model, 0).Subgraphs(0)
    done = []
    for op in graph.ops:
        if op.kind not in WEIGHTED_OPS or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        weight = graph.tensors[stored_weight(graph, op)]
        bias = graph.tensors[op.inputs[2]]
        x = graph.tensors[op.inputs[0]]
        float_op = float_graph.op_by_scope(op.scope)
        if (
            not weight.is_int8
            or weight.scales is None
            or bias.type != 2  # int32
            or bias.scales is None
            or x.scales is None
            or float_op is None
            or graph.buffer_users.get(weight.buffer, 0) > 1
        ):
            continue
        float_weight = float_graph.constant(float_op.inputs[1])
        has_bias = len(float_op.inputs) > 2 and float_op.inputs[2] >= 0
        float_bias = float_graph.constant(float_op.inputs[2]) if has_bias else None
        if float_weight is None or float_bias is None or float_weight.shape != weight.shape:
            continue
        axis = weight.quantized_dimension
        channels = weight.scales.size
        if channels != float_bias.size or bias.scales.size != channels:
            continue
        fan_in = int(np.prod(weight.shape)) // channels
        headroom = fan_in * 127 * 255  # the largest |accumulator|: levels x (input - zero point)
        limit = _INT32_MAX - headroom
        in_step = float(x.scales[0])
        needed = np.abs(float_bias.astype(np.float64)) / (in_step * limit)
        widen = np.flatnonzero(weight.scales < needed)
        if widen.size == 0:
            continue
        scales = weight.scales.astype(np.float64).copy()
        scales[widen] = needed[widen] * 1.001  # a hair over: rounding of the new bias stays inside
        levels = writable_tensor(model, weight.index, np.int8).reshape(weight.shape)
        moved_w = np.moveaxis(float_weight.astype(np.float64), axis, 0)
        moved_levels = np.moveaxis(levels, axis, 0)  # a view: writing it writes the model
        for c in widen:
            moved_levels[c] = np.clip(np.round(moved_w[c] / scales[c]), -127, 127).astype(np.int8)
        bias_scales = in_step * scales
        stored_bias = writable_tensor(model, bias.index, np.int32)
        stored_bias[widen] = np.round(float_bias[widen].astype(np.float64) / bias_scales[widen]).astype(np.int32)
        tensors.Tensors(weight.index).Quantization().ScaleAsNumpy()[:] = scales.astype(np.float32)
        tensors.Tensors(bias.index).Quantization().ScaleAsNumpy()[:] = bias_scales.astype(np.float32)
        graph.tensors[weight.index] = replace(weight, scales=scales.astype(np.float32).astype(np.float64))
        graph.tensors[bias.index] = replace(bias, scales=bias_scales.astype(np.float32).astype(np.float64))
        done.append(WidenedChannels(op.label, [int(c) for c in widen]))
    return done
