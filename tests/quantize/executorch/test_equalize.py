"""Cross-layer equalization of the torch graph: the float function is unchanged, the streams are the right ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.quantize.executorch.equalize import equalize, find_streams  # noqa: E402
from mobex.quantize.executorch.graph import export_batched, fold_batch_norm  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds, mbnet  # noqa: E402

torch.set_num_threads(1)


def _folded(model: nn.Module):  # noqa: ANN202 - a torch.fx GraphModule
    graph = export_batched(model, {"image": torch.zeros(1, 1, 8, 8)})
    fold_batch_norm(graph.module)
    return graph.module


def _channel_ranges(gm, name: str, x: torch.Tensor) -> np.ndarray:  # noqa: ANN001
    from mobex.quantize.executorch.equalize import _channel_absmax

    return _channel_absmax(gm, {name}, [(x,)])[name]


def test_streams_are_the_residual_bottleneck_and_relu6_outputs_into_depthwise() -> None:
    gm = _folded(mbnet())
    streams = find_streams(gm)
    linear = [s for s in streams if s.clip is None]
    clipped = [s for s in streams if s.clip is not None]
    # The residual: blocks.0's project output (read by blocks.1's expand) + blocks.1's project, read by the head
    assert [(len(s.producers), len(s.consumers), len(s.tensors)) for s in linear] == [(2, 2, 3)]
    assert len(clipped) == 2  # the two expand convolutions' ReLU6 outputs, read by depthwise convolutions


def test_equalization_keeps_the_float_function_and_evens_the_ranges() -> None:
    gm = _folded(mbnet())
    x = torch.cat([torch.from_numpy(f["image"]) for f in digit_feeds(count=64)])
    with torch.no_grad():
        before = gm(x)[0].clone()
    stream = next(s for s in find_streams(gm) if s.clip is None)
    tensor = next(t for t in stream.tensors if t.startswith("add"))
    spread_before = _channel_ranges(gm, tensor, x)
    report = equalize(gm, [(x,)])
    with torch.no_grad():
        after = gm(x)[0]
    assert torch.allclose(after, before, rtol=1e-4, atol=1e-4 * before.abs().max().item())
    assert report.streams == 3 and report.clipped_streams == 2 and report.max_scale > 1.0
    spread_after = _channel_ranges(gm, tensor, x)
    assert spread_after.max() / spread_after.min() < spread_before.max() / spread_before.min()
    assert "1 linear stream(s) and 2 ReLU6 output(s)" in report.summary()


def test_a_weight_shared_by_two_ops_is_left_alone() -> None:
    class Shared(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(1, 4, 1)
            self.b = nn.Conv2d(4, 4, 1)

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.b(self.b(self.a(image)))  # b's weight rows and columns would both have to scale

    assert find_streams(_folded(Shared().eval())) == []
