"""Cross-layer equalization through ReLU6 (equalize.py): the small channels of a ReLU6 output that feeds a
depthwise convolution are scaled up to the largest one, the float function stays the same on the
calibration data, a channel that reaches the clip is left alone, and a ReLU6 output that feeds a 1x1
convolution is not touched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.quantize.tflite.equalize import _channel_absmax, equalize, find_streams
from mobex.quantize.tflite.graph import TfliteGraph
from mobex.runtime.litert import TfliteRunner

torch.set_num_threads(1)
CHANNELS = 8


class StemAndDepthwise(nn.Module):
    """Stem conv + ReLU6 -> depthwise 3x3 + ReLU6 -> 1x1 conv -> mean: the start of a MobileNet."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, CHANNELS, 3, padding=1)
        self.depthwise = nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1, groups=CHANNELS)
        self.project = nn.Conv2d(CHANNELS, 4, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem(image))
        x = nn.functional.relu6(self.depthwise(x))
        return self.project(x).mean(dim=(2, 3))


@pytest.fixture(scope="module")
def stem_model(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = StemAndDepthwise().eval()
    with torch.no_grad():
        # Channel ranges 100x apart, like BatchNorm-folded stems; channel 0 is large enough to clip at 6.
        spread = torch.logspace(1, -1, CHANNELS)
        model.stem.weight *= spread.view(-1, 1, 1, 1)
        model.stem.bias.zero_()
        model.stem.bias[0] = 8.0
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.uniform(0, 1, (1, 3, 8, 8)).astype(np.float32)} for _ in range(16)]
    example = {"image": torch.from_numpy(feeds[0]["image"])}
    base = convert_tflite(model, example, tmp_path_factory.mktemp("eq") / "m.tflite")
    return base.path, feeds


def _stem_stream(model: bytes):
    graph = TfliteGraph(model)
    clipped = [s for s in find_streams(graph) if s.clip is not None]
    return graph, clipped


def test_relu6_output_into_depthwise_is_equalized_within_the_clip(stem_model, tmp_path: Path) -> None:
    path, feeds = stem_model
    original = path.read_bytes()
    graph, clipped = _stem_stream(original)
    # Only the stem's output qualifies: the depthwise output feeds a 1x1 convolution.
    assert len(clipped) == 1
    (stream,) = clipped
    assert all(graph.ops[i].kind == "DEPTHWISE_CONV_2D" for i in stream.consumers)
    signature = TfliteRunner(path).signature
    before = _channel_absmax(original, graph, clipped, feeds, signature, 1)
    (tensor,) = [t for t in stream.tensors if t in before]
    assert before[tensor][0] == pytest.approx(6.0)  # channel 0 clips
    assert before[tensor][1:].max() < 6.0 and before[tensor].min() < 0.5  # the others are small

    equalized, report = equalize(original, feeds, signature=signature, use_weights=False, alpha=1.0)
    assert report.clipped_streams == 1
    assert "1 ReLU6 output(s)" in report.summary()
    after = _channel_absmax(equalized, TfliteGraph(equalized), clipped, feeds, signature, 1)[tensor]
    live = before[tensor] > 0
    # Every live channel now spans the clip range: 6 (channel 0, untouched) or scaled up to exactly 6.
    np.testing.assert_allclose(after[live], 6.0, rtol=1e-4)
    assert report.max_scale > 10

    eq_path = tmp_path / "eq.tflite"
    eq_path.write_bytes(equalized)
    a, b = TfliteRunner(path), TfliteRunner(eq_path)
    for feed in feeds:  # the same float function on every calibration sample
        np.testing.assert_allclose(b.run(feed)[0], a.run(feed)[0], rtol=1e-4, atol=1e-5)


def test_relu6_equalization_can_be_switched_off(stem_model) -> None:
    path, feeds = stem_model
    original = path.read_bytes()
    signature = TfliteRunner(path).signature
    _, report = equalize(original, feeds, signature=signature, use_weights=False, alpha=1.0, clipped=False)
    assert report.clipped_streams == 0
