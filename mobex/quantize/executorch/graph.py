"""The float torch graph int8 works on: exported once, batch dimension dynamic, BatchNorm folded; its ops.

- `export_batched`: torch.export of the model (outputs flattened in torch order, as the converter does)
  with a dynamic batch dimension where the model allows it, so that calibration and every candidate of
  the fallback search run the calibration data several samples per call (digits_cnn: python overhead per
  call dominates; EfficientNet-Lite0 in torch gets slower per sample beyond a few). Models whose code fixes
  the batch size export with static shapes and run one sample at a time.
- `fold_batch_norm`: BatchNorm folded into the convolution before it (torchao's own pass, which
  prepare_pt2e would run on every candidate); equalization (equalize.py) then sees the folded weights.
- `quantizable_ops`: the ops XNNPACKQuantizer annotates (convolutions and linears with the ReLU/ReLU6
  fused after them, adds, muls, concatenations, average pools), in graph order, each named after its
  main node, with a label made of its kind and the torch module it comes from. They are the units of the
  float fallback (`search.py`, which reads `index`, `kind`, `scope` and `label` as it does TFLite ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mobex.converters.executorch import flat_outputs
from mobex.errors import ConversionError

EVAL_BATCH = 8  # measured on EfficientNet-Lite0 in torch, 1 thread: larger batches run slower per sample


@dataclass(frozen=True)
class QuantizableOp:
    """One op int8 quantizes (or keeps in float), as the fallback search sees it."""

    index: int  # position in graph order
    kind: str  # "conv2d", "depthwise_conv2d", "linear", "add", ...
    scope: str  # the main node's name, unique in the graph
    module: str  # the torch module it comes from ("_blocks.0._depthwise_conv"), or "" at top level
    nodes: tuple[str, ...]  # every node of the op (the main node and a fused activation)

    @property
    def label(self) -> str:
        return f"{self.kind} {self.module}" if self.module else f"{self.kind} (node {self.scope})"


@dataclass
class FloatGraph:
    """The exported float model (a torch.fx GraphModule with aten ops) and whether it takes any batch size."""

    module: Any
    batched: bool


def export_batched(model: Any, example_inputs: dict[str, Any]) -> FloatGraph:
    """torch.export with a dynamic batch dimension when possible (module docstring), else static shapes."""
    import torch

    args = tuple(example_inputs.values())
    wrapped = flat_outputs(model)
    if all(a.ndim > 0 and a.shape[0] == 1 for a in args):
        batch = torch.export.Dim("batch", min=1, max=4096)
        two = tuple(torch.cat([a, a]) for a in args)  # a size-1 dim would be specialised to 1
        try:
            with torch.no_grad():
                program = torch.export.export(
                    wrapped, two, dynamic_shapes={"args": tuple({0: batch} for _ in args)}, strict=False
                )
            return FloatGraph(program.module(), batched=True)
        except Exception:  # noqa: BLE001 - any reason the model fixes its batch size: export it as it is
            pass  # below: the graph at the example's own batch size
    try:
        with torch.no_grad():
            return FloatGraph(torch.export.export(wrapped, args, strict=False).module(), batched=False)
    except Exception as e:  # noqa: BLE001
        raise ConversionError(
            f"torch.export failed on the model before int8 quantization: {type(e).__name__}: {e}"
        ) from e


def fold_batch_norm(gm: Any) -> None:
    """Fold every conv -> BatchNorm pair into the convolution, in place (torchao's pass used by prepare_pt2e)."""
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    _fuse_conv_bn_(gm)


_KINDS = {
    "conv1d": "conv1d",
    "conv2d": "conv2d",
    "linear": "linear",
    "add": "add",
    "mul": "mul",
    "cat": "cat",
    "adaptive_avg_pool2d": "avg_pool",
}
_FUSED_ACTIVATIONS = ("relu", "relu_", "relu6", "hardtanh", "hardtanh_")


def quantizable_ops(gm: Any) -> list[QuantizableOp]:
    """The ops XNNPACKQuantizer can annotate, with their fused activation (module docstring)."""
    ops = []
    for index, node in enumerate(gm.graph.nodes):
        if node.op != "call_function":
            continue
        base = getattr(node.target, "__name__", "").split(".")[0]
        if base not in _KINDS:
            continue
        kind = _KINDS[base]
        if base == "conv2d" and is_depthwise(node):
            kind = "depthwise_conv2d"
        nodes = [node.name]
        users = list(node.users)
        if len(users) == 1 and getattr(users[0].target, "__name__", "").split(".")[0] in _FUSED_ACTIVATIONS:
            nodes.append(users[0].name)
        ops.append(QuantizableOp(index, kind, node.name, _module_path(node), tuple(nodes)))
    return ops


def op_of_node(ops: list[QuantizableOp]) -> dict[str, str]:
    """node name -> the scope of the op it belongs to."""
    return {name: op.scope for op in ops for name in op.nodes}


def is_depthwise(conv: Any) -> bool:
    """A conv2d node with one filter per input channel (groups = in channels = out channels)."""
    groups = conv.args[6] if len(conv.args) > 6 else conv.kwargs.get("groups", 1)
    x, y = conv.args[0].meta.get("val"), conv.meta.get("val")
    return groups > 1 and x is not None and y is not None and x.shape[1] == groups == y.shape[1]


def _module_path(node: Any) -> str:
    """The innermost torch module the node was traced in, without the export wrapper's `model.` prefix."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    for prefix in ("L['self'].model.", "model."):
        if path.startswith(prefix):
            return path[len(prefix) :]
    return "" if path in ("model", "L['self'].model") else path
