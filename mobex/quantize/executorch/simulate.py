"""A fast torch twin of a converted PT2E model, for ranking int8 candidates on the calibration data.

convert_pt2e's model quantizes and dequantizes every int8 tensor with torch's decomposed ops (several
elementwise passes each) and dequantizes every weight on every call: on EfficientNet-Lite0 it runs ~14x
slower than the float model. `simulate` rewrites a copy of it so that
- a quantize -> dequantize pair on an activation is one `torch.fake_quantize_per_tensor_affine` (the same
  affine int8 rounding and clamping, in one native op);
- a dequantized constant (int8 weights, per channel or per tensor) is dequantized once, here, and kept as
  a float constant.
Only the speed changes: the twin computes the same function up to rounding ties (x / s against x * (1/s)).
"""

from __future__ import annotations

import copy
import operator
from typing import Any


def _ops() -> dict[str, Any]:
    import torch

    q = torch.ops.quantized_decomposed
    return {
        "quantize": q.quantize_per_tensor.default,
        "dequantize": q.dequantize_per_tensor.default,
        "dequantize_channel": q.dequantize_per_channel.default,
    }


def simulate(converted: Any) -> Any:
    """A copy of the converted PT2E GraphModule with fused fake quantization and pre-dequantized constants."""
    import torch

    gm = copy.deepcopy(converted)
    ops = _ops()
    graph = gm.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (ops["dequantize"], ops["dequantize_channel"]):
            continue
        source = node.args[0]
        if source.op == "get_attr":
            _fold_constant(gm, node)
        elif node.target is ops["dequantize"] and source.target is ops["quantize"] and _same_params(node, source):
            _, scale, zero_point, qmin, qmax, _ = source.args
            with graph.inserting_before(node):
                fused = graph.call_function(
                    torch.fake_quantize_per_tensor_affine,
                    (source.args[0], float(scale), int(zero_point), int(qmin), int(qmax)),
                )
            node.replace_all_uses_with(fused)
            graph.erase_node(node)
    graph.eliminate_dead_code()  # the quantize nodes and int8 constants nothing reads any more
    gm.recompile()
    return gm


def _same_params(dq: Any, q: Any) -> bool:
    return tuple(dq.args[1:]) == tuple(q.args[1:])


def _fold_constant(gm: Any, node: Any) -> None:
    """Replace `dequantize(constant)` by the float constant it computes."""
    import torch

    def value(arg: Any) -> Any:
        return operator.attrgetter(arg.target)(gm) if getattr(arg, "op", None) == "get_attr" else arg

    with torch.no_grad():
        folded = node.target(*[value(a) for a in node.args], **node.kwargs)
    name = f"_mobex_float_{node.name}"
    gm.register_buffer(name, folded)
    with gm.graph.inserting_before(node):
        attr = gm.graph.get_attr(name)
    node.replace_all_uses_with(attr)
    gm.graph.erase_node(node)
