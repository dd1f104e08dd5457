"""The float graph int8 starts from: batched export, BatchNorm folding, the ops the fallback can keep in float."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.quantize.executorch.graph import export_batched, fold_batch_norm, op_of_node, quantizable_ops  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds, mbnet  # noqa: E402

torch.set_num_threads(1)


def test_export_takes_any_batch_and_folding_keeps_the_function() -> None:
    model = mbnet()
    graph = export_batched(model, {"image": torch.zeros(1, 1, 8, 8)})
    assert graph.batched
    x = torch.from_numpy(np.concatenate([f["image"] for f in digit_feeds(count=5)]))
    with torch.no_grad():
        want = model(x)
        fold_batch_norm(graph.module)
        got = graph.module(x)[0]
    assert not any("batch_norm" in str(n.target) for n in graph.module.graph.nodes)
    assert torch.allclose(got, want, atol=1e-5)


def test_a_model_that_fixes_its_batch_size_exports_static() -> None:
    class FixedBatch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear(x.reshape(1, 16))

    graph = export_batched(FixedBatch().eval(), {"x": torch.zeros(1, 4, 4)})
    assert not graph.batched
    assert graph.module(torch.ones(1, 4, 4))[0].shape == (1, 3)


def test_ops_carry_kind_module_and_fused_activation() -> None:
    graph = export_batched(mbnet(), {"image": torch.zeros(1, 1, 8, 8)})
    fold_batch_norm(graph.module)
    ops = quantizable_ops(graph.module)
    labels = [op.label for op in ops]
    assert labels[:4] == [
        "conv2d stem.0",
        "conv2d blocks.0.expand.0",
        "depthwise_conv2d blocks.0.depthwise.0",
        "conv2d blocks.0.project.0",
    ]
    assert "add blocks.1" in labels and labels[-1] == "linear classifier"
    assert [len(op.nodes) for op in ops[:4]] == [2, 2, 2, 1]  # ReLU6 fused after stem/expand/depthwise only
    assert [op.index for op in ops] == sorted(op.index for op in ops)
    owner = op_of_node(ops)
    assert owner[ops[0].nodes[1]] == ops[0].scope
