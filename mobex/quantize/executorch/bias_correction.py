"""Bias correction of int8 weights (Nagel et al. 2019, section 4.2) on the torch graph, before PT2E converts it.

The reason and the formula are those of TFLite int8 (`mobex.quantize.tflite.bias_correction`): rounding
a layer's weights to int8 shifts its output by `conv(x, W_q - W)`, which for depthwise convolutions with
BatchNorm folded in and positive inputs adds up to a systematic per-channel shift; its expectation,
`mean over positions of conv(E[x], W_q - W)` with `E[x]` the mean input at every position over the
calibration data, is subtracted from the bias. Here `W_q` is exactly what XNNPACK will use: the weight
fake-quantized with the calibrated weight observer's per-channel scales (symmetric, [-127, 127]).

XNNPACK's config leaves biases in float (they become int32 at lowering, at the input scale times the weight
scale), so the corrected float bias is what the `.pte` gets. An op kept in float keeps its own bias.
"""

from __future__ import annotations

import operator
from typing import Any

_WEIGHTED = ("conv1d", "conv2d", "linear")


def _base(node: Any) -> str:
    return getattr(node.target, "__name__", "").split(".")[0] if node.op == "call_function" else ""


def weighted_nodes(gm: Any) -> list[Any]:
    """conv/linear nodes whose weight and bias are constants of the graph (get_attr)."""
    return [
        n
        for n in gm.graph.nodes
        if _base(n) in _WEIGHTED
        and len(n.args) > 2
        and getattr(n.args[1], "op", None) == "get_attr"
        and getattr(n.args[2], "op", None) == "get_attr"
    ]


def mean_inputs(gm: Any, nodes: list[Any], batches: list[tuple[Any, ...]]) -> dict[str, Any]:
    """node name -> the mean of its input (args[0]) over every calibration sample, at every position."""
    import torch

    wanted = {n.args[0].name: n.name for n in nodes}
    sums: dict[str, Any] = {}
    count = 0

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            value = super().run_node(n)
            if n.name in wanted:
                total = value.detach().double().sum(dim=0)
                sums[n.name] = total if n.name not in sums else sums[n.name] + total
            return value

    recorder = Recorder(gm)
    with torch.no_grad():
        for batch in batches:
            recorder.run(*batch)
            count += int(batch[0].shape[0])
    return {op: (sums[src] / count).float() for src, op in wanted.items() if src in sums}


def corrected_biases(gm: Any, nodes: list[Any], means: dict[str, Any], weight_observers: dict[str, Any]) -> dict:
    """node name -> (bias attribute, corrected bias) for every weighted op with a mean input and an observer."""
    import torch

    out = {}
    for node in nodes:
        observer = weight_observers.get(node.args[1].name)
        if node.name not in means or observer is None:
            continue
        weight = operator.attrgetter(node.args[1].target)(gm)
        bias = operator.attrgetter(node.args[2].target)(gm)
        scale, zero_point = observer.calculate_qparams()
        qmin, qmax = observer.quant_min, observer.quant_max
        with torch.no_grad():
            quantized = torch.fake_quantize_per_channel_affine(
                weight, scale.float(), zero_point.int(), 0, qmin, qmax
            )
            shift = _mean_output_shift(node, quantized - weight, means[node.name])
        out[node.name] = (node.args[2].target, (bias - shift).detach())
    return out


def _mean_output_shift(node: Any, delta: Any, mean_input: Any) -> Any:
    """Per output channel, the mean over positions of op(E[x], W_q - W) (the op without its bias)."""
    import torch.nn.functional as F

    x = mean_input.unsqueeze(0)
    base = _base(node)
    if base == "linear":
        return F.linear(x, delta).reshape(-1, delta.shape[0]).mean(dim=0)
    conv = F.conv2d if base == "conv2d" else F.conv1d
    y = conv(x, delta, None, *node.args[3:7])
    return y.transpose(0, 1).reshape(delta.shape[0], -1).mean(dim=1)
