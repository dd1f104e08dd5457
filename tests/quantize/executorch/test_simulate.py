"""The fast torch twin of a converted PT2E model computes what the converted model computes."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.quantize.executorch.simulate import simulate  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds  # noqa: E402
from tests.quantize.executorch.test_quantizer import _converted  # noqa: E402

torch.set_num_threads(1)


def test_twin_matches_the_converted_model_without_its_quantize_ops() -> None:
    converted, _ = _converted()
    twin = simulate(converted)
    targets = {str(n.target) for n in twin.graph.nodes}
    assert not any("quantized_decomposed" in t for t in targets)
    assert any("fake_quantize_per_tensor_affine" in t for t in targets)
    x = torch.cat([torch.from_numpy(f["image"]) for f in digit_feeds("val", 32)])
    with torch.no_grad():
        want, got = converted(x)[0], twin(x)[0]
    step = (want.max() - want.min()) / 255  # one int8 level of the output
    assert (got - want).abs().max() <= step * 1.01
    assert (got.argmax(1) == want.argmax(1)).float().mean() >= 0.97
    assert converted is not twin and any("quantized_decomposed" in str(n.target) for n in converted.graph.nodes)
