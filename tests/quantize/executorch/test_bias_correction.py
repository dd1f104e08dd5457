"""Bias correction on the torch graph: the corrected bias cancels the int8 weights' mean output shift."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.quantize.executorch.static_int8 import EtInt8Options, ExecutorchInt8  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds, mbnet  # noqa: E402

torch.set_num_threads(1)


class Depthwise(nn.Module):
    """A depthwise 3x3 convolution with large, zero-sum weights on positive inputs: the textbook case."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        with torch.no_grad():
            w = torch.randn(8, 1, 3, 3)
            self.conv.weight.copy_((w - w.mean(dim=(2, 3), keepdim=True)) * 20)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image)


def _feeds(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [{"image": rng.uniform(0, 6, (1, 8, 6, 6)).astype(np.float32)} for _ in range(count)]


def test_corrected_bias_cancels_the_mean_shift_of_int8_weights() -> None:
    model = Depthwise().eval()
    feeds = _feeds(64)
    maker = ExecutorchInt8(model, {"image": torch.zeros(1, 8, 6, 6)}, feeds, EtInt8Options(equalize=False))
    (scope, (target, corrected)), = maker._corrections.items()
    observer = next(o for k, o in maker._observers.items() if "weight" in k)
    scale, zero_point = observer.calculate_qparams()
    w = model.conv.weight.detach()
    w_q = torch.fake_quantize_per_channel_affine(w, scale.float(), zero_point.int(), 0, -127, 127)
    x = torch.from_numpy(np.concatenate([f["image"] for f in feeds]))
    with torch.no_grad():
        want = model(x)
        shift_plain = (torch.conv2d(x, w_q, model.conv.bias, 1, 1, 1, 8) - want).mean(dim=(0, 2, 3))
        shift_fixed = (torch.conv2d(x, w_q, corrected, 1, 1, 1, 8) - want).mean(dim=(0, 2, 3))
    assert shift_plain.abs().max() > 0.01
    assert shift_fixed.abs().max() < 1e-4 * shift_plain.abs().max().item() + 1e-5


def test_corrections_apply_only_to_ops_with_int8_weights() -> None:
    maker = ExecutorchInt8(mbnet(), {"image": torch.zeros(1, 1, 8, 8)}, digit_feeds(count=16),
                           EtInt8Options(calibration_samples=16))  # fmt: skip
    weighted = [op.scope for op in maker.ops if op.kind in ("conv2d", "depthwise_conv2d", "linear")]
    assert sorted(maker._corrections) == sorted(weighted)
    first = weighted[0]
    target, corrected = maker._corrections[first]
    import operator

    kept = operator.attrgetter(target)(maker._prepared(frozenset({first})))
    fixed = operator.attrgetter(target)(maker._prepared())
    assert torch.equal(kept, operator.attrgetter(target)(maker.float_module))  # a float op keeps its own bias
    assert torch.equal(fixed, corrected)
