"""mobex's XNNPACK quantizer: ReLU6 fused into the op before it, ops kept in float or quantized alone."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.quantize.executorch.graph import export_batched, fold_batch_norm, op_of_node, quantizable_ops  # noqa: E402
from mobex.quantize.executorch.quantizer import fused_clamp_pairs, is_relu6, make_quantizer  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds, mbnet  # noqa: E402

torch.set_num_threads(1)
_Q = "quantize_per_tensor"


def _converted(**kwargs):  # noqa: ANN003, ANN202 - a torch.fx GraphModule
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    graph = export_batched(mbnet(), {"image": torch.zeros(1, 1, 8, 8)})
    fold_batch_norm(graph.module)
    ops = quantizable_ops(graph.module)
    prepared = prepare_pt2e(graph.module, make_quantizer("minmax", unit_of=op_of_node(ops), **kwargs))
    with torch.no_grad():
        for feed in digit_feeds(count=8):
            prepared(torch.from_numpy(feed["image"]))
    return convert_pt2e(prepared), ops


def _users(gm, name: str) -> list[str]:  # noqa: ANN001
    node = next(n for n in gm.graph.nodes if n.name == name)
    return [str(u.target) for u in node.users]


def _weight_is_int8(gm, name: str) -> bool:  # noqa: ANN001
    node = next(n for n in gm.graph.nodes if n.name == name)
    return "dequantize_per_channel" in str(node.args[1].target)


def test_relu6_is_fused_into_the_convolution_before_it() -> None:
    fused, ops = _converted()
    stem = ops[0]
    assert _users(fused, stem.scope) == ["aten.hardtanh.default"]  # nn.ReLU6; no int8 round trip before it
    assert _Q in _users(fused, stem.nodes[1])[0]
    plain, _ = _converted(fuse_relu6=False)  # XNNPACKQuantizer's own annotation quantizes the conv output
    assert _Q in _users(plain, stem.scope)[0]


def test_skipped_ops_keep_float_weights_and_only_quantizes_one_op() -> None:
    full, ops = _converted()
    weighted = [op for op in ops if op.kind in ("conv2d", "depthwise_conv2d", "linear")]
    assert all(_weight_is_int8(full, op.scope) for op in weighted)
    skip = frozenset({weighted[0].scope, weighted[2].scope})
    partly, _ = _converted(skip=skip)
    assert [_weight_is_int8(partly, op.scope) for op in weighted[:4]] == [False, True, False, True]
    alone, _ = _converted(only=weighted[1].scope)
    assert [op.scope for op in weighted if _weight_is_int8(alone, op.scope)] == [weighted[1].scope]


def test_relu6_recognition() -> None:
    class Clamps(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 1)

        def forward(self, x: torch.Tensor):  # noqa: ANN201
            a = torch.nn.functional.hardtanh(self.conv(x), 0.0, 6.0)
            return a, torch.nn.functional.hardtanh(x, -1.0, 1.0), torch.nn.functional.relu6(x)

    graph = export_batched(Clamps().eval(), {"x": torch.zeros(1, 1, 2, 2)})
    flags = [is_relu6(n) for n in graph.module.graph.nodes if "hardtanh" in str(n.target) or "relu6" in str(n.target)]
    assert flags == [True, False, True]
    assert [(a.name, b.name) for a, b in fused_clamp_pairs(graph.module)] == [("conv2d", "hardtanh")]


def test_an_op_kept_in_float_after_a_zero_pad_still_lowers_to_xnnpack() -> None:
    """EfficientNet-Lite0 pads before its stride-2 convolutions; XNNPACK refused a float one there."""
    import torch.nn.functional as F

    from mobex.converters.executorch import lower_program
    from mobex.quantize.executorch.static_int8 import EtInt8Options, ExecutorchInt8

    class Padded(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a, self.b = torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.Conv2d(8, 8, 3, groups=8)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            x = F.relu6(self.a(F.pad((image - 0.5) * 2.0, (0, 1, 0, 1))))
            return self.b(F.pad(x, (1, 1, 1, 1))).mean(dim=(2, 3))

    example = {"image": torch.zeros(1, 1, 8, 8)}
    maker = ExecutorchInt8(Padded().eval(), example, digit_feeds(count=8), EtInt8Options(calibration_samples=8))
    for op in maker.ops[1:]:  # both convolutions read a pad of an int8 tensor
        exported = torch.export.export(maker.converted(frozenset({op.scope})), (example["image"],), strict=False)
        assert lower_program(exported, ["image"], ["y"]).delegation.partitions >= 1
