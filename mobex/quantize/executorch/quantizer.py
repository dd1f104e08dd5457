"""ExecuTorch's XNNPACKQuantizer, with ReLU6 fused into the op before it and with ops kept in float on request.

Why a subclass (measured on EfficientNet-Lite0, docs/executorch.md): in torch 2.13's export IR `F.relu6`
is `aten.relu6`, which XNNPACKQuantizer neither fuses (its fused patterns are conv/linear/add/mul + ReLU)
nor shares a scale with. So the convolution before it gets its own output scale over the pre-clamp range
(about +-80 on EfficientNet-Lite0's first depthwise convolution), the ReLU6 output then has ~10 levels in
[0, 6], and the PT2E model run in torch keeps 6.5 dB SNR after one block (XNNPACK's lowering happens to
fuse some of these clamps back, which is why the `.pte` fares better than its own reference). Annotated
like conv + ReLU (the convolution's output not observed, the ReLU6's output quantized), the int8 graph
is what XNNPACK runs as one convolution with an output clamp, and TFLite's fused RELU6.

`skip` (op names) keeps those ops in float: they get no annotation, so their weights stay float, their
inputs are dequantized and they compute in float (the float fallback of `mobex.quantize.executorch.search`).
`only` quantizes that op alone (the sensitivity measurement). Ops are named by their main node (see
`mobex.quantize.executorch.graph`); the filter is ExecuTorch's `set_filter_function`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mobex.quantize.executorch.observers import range_observer

WEIGHT_QMAX = 127  # XNNPACK int8 weights: symmetric, [-127, 127], per output channel


def _clamp_targets() -> tuple[Any, ...]:
    import torch

    aten = torch.ops.aten
    return (aten.relu6.default, aten.hardtanh.default, aten.hardtanh_.default)


def _weighted_targets() -> tuple[Any, ...]:
    import torch

    aten = torch.ops.aten
    return (aten.conv2d.default, aten.conv1d.default, aten.linear.default)  # not transposed: weights per axis 0


def is_relu6(node: Any) -> bool:
    """relu6, or hardtanh with the bounds 0 and 6 (what F.relu6 / nn.ReLU6 export as)."""
    if node.op != "call_function" or node.target not in _clamp_targets():
        return False
    if node.target.__name__.startswith("relu6"):
        return True
    lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
    hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
    return float(lo) == 0.0 and float(hi) == 6.0


def fused_clamp_pairs(gm: Any) -> list[tuple[Any, Any]]:
    """(weighted op, ReLU6) pairs where the ReLU6 is the weighted op's only user."""
    pairs = []
    for node in gm.graph.nodes:
        if not is_relu6(node):
            continue
        producer = node.args[0]
        if getattr(producer, "op", None) == "call_function" and producer.target in _weighted_targets():
            if len(producer.users) == 1:
                pairs.append((producer, node))
    return pairs


def quantization_config(range_estimation: str) -> Any:
    """XNNPACK's static per-channel config (int8 weights per output channel, per-tensor int8 activations),
    with the activation observer for `range_estimation` (see observers.py)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantizer import QuantizationConfig, QuantizationSpec

    config = get_symmetric_quantization_config(is_per_channel=True)
    if range_estimation == "histogram":  # ExecuTorch's default
        return config
    act = config.input_activation
    spec = QuantizationSpec(
        dtype=act.dtype,
        quant_min=act.quant_min,
        quant_max=act.quant_max,
        qscheme=act.qscheme,
        is_dynamic=False,
        observer_or_fake_quant_ctr=range_observer(range_estimation),
    )
    return QuantizationConfig(spec, spec, config.weight, config.bias, False)


def make_quantizer(
    range_estimation: str = "minmax",
    *,
    unit_of: dict[str, str] | None = None,
    skip: frozenset[str] = frozenset(),
    only: str | None = None,
    fuse_relu6: bool = True,
) -> Any:
    """The XNNPACK quantizer for one candidate: ops whose unit is in `skip` (or, with `only`, every unit but
    that one) left unannotated. `unit_of` maps node names to op (unit) names (graph.py)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class MobexXnnpackQuantizer(XNNPACKQuantizer):
        """XNNPACKQuantizer + ReLU6 fused like ReLU (module docstring).

        Without the conv + BatchNorm patterns: prepare_pt2e folds BatchNorm before it annotates, so they
        never match in post-training quantization, and each annotation traced them with torch.export again
        (11 of the 12 s a digits_cnn candidate took)."""

        SUPPORTED_PATTERNS = [p for p in XNNPACKQuantizer.SUPPORTED_PATTERNS if "_bn" not in p.name]

        def annotate(self, model: Any) -> Any:
            if fuse_relu6:
                _annotate_fused_relu6(model, self.global_config, self.filter_fn)
            super().annotate(model)
            _share_pad_qparams(model)
            return model

    quantizer = MobexXnnpackQuantizer().set_global(quantization_config(range_estimation))
    if unit_of is not None and (skip or only is not None):
        quantizer.set_filter_function(_unit_filter(unit_of, skip, only))
    return quantizer


def _unit_filter(unit_of: dict[str, str], skip: frozenset[str], only: str | None) -> Callable[[Any], bool]:
    def keep(node: Any) -> bool:
        unit = unit_of.get(node.name)
        if unit is None:  # weights, constants and plumbing follow the op that reads them
            return True
        return unit == only if only is not None else unit not in skip

    return keep


def _share_pad_qparams(gm: Any) -> None:
    """A zero pad after an int8 tensor is int8 with the same scale, like the reshapes XNNPACKQuantizer shares.

    Its own list of scale-sharing ops leaves `pad` out, so a pad between an int8 tensor and an op kept in
    float (EfficientNet-Lite0's stride-2 depthwise convolutions pad first) left XNNPACK's lowering with a
    convolution whose input it takes for int8 (the pad passes the int8 type through) and whose weights are
    float: "Weight and Input should both be quantized". Sharing the scale quantizes the pad's output, so the
    float op reads an explicit dequantize, as everywhere else."""
    import torch
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    pads = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in pads:
            continue
        prev = node.args[0]
        annotation = getattr(prev, "meta", {}).get(Q_ANNOTATION_KEY)
        if annotation is None or annotation.output_qspec is None:
            continue
        if Q_ANNOTATION_KEY in node.meta and node.meta[Q_ANNOTATION_KEY]._annotated:
            continue
        shared = SharedQuantizationSpec(prev)
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={prev: shared}, output_qspec=shared, _annotated=True
        )


def _annotate_fused_relu6(gm: Any, config: Any, filter_fn: Callable[[Any], bool] | None) -> None:
    """Annotate conv/linear -> ReLU6 as one quantized op, as XNNPACK's conv/linear -> ReLU annotators do."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer_utils import (
        _is_annotated,
        _mark_nodes_as_annotated,
        get_bias_qspec,
        get_input_act_qspec,
        get_output_act_qspec,
        get_weight_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    for op, clamp in fused_clamp_pairs(gm):
        qspecs = {op.args[0]: get_input_act_qspec(config), op.args[1]: get_weight_qspec(config)}
        partition = [clamp, op, op.args[1]]
        bias = op.args[2] if len(op.args) > 2 else None
        if bias is not None and hasattr(bias, "op"):
            qspecs[bias] = get_bias_qspec(config)
            partition.append(bias)
        if _is_annotated(partition) or (filter_fn is not None and not all(filter_fn(n) for n in partition)):
            continue
        op.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=qspecs, _annotated=True)
        output = get_output_act_qspec(config)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=output, _annotated=True)
        _mark_nodes_as_annotated(partition)
