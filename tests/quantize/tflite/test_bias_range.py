"""A dead channel (weights ~0, a large negative bias, so relu(bias) = 0) must stay 0 in static int8.

Its tiny per-channel weight scale makes `bias / (input step x weight scale)` overflow int32. Clipped to -2^31,
the kernel's int32 sum wraps around and the channel outputs a large wrong constant, which the next layer
carries to the output. The model file itself is wrong, so the test checks the file and both LiteRT kernel
paths: XNNPACK and the built-in kernels (what runs where no delegate applies).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ai_edge_litert.interpreter import Interpreter, OpResolverType
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.quantize.tflite.bias_range import fit_int32_biases
from mobex.quantize.tflite.graph import TfliteGraph
from mobex.quantize.tflite.static_int8 import Int8Options, StaticInt8

torch.set_num_threads(1)
DEAD = 3  # the dead channel of the first layer


class DeadChannelNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.first = nn.Linear(16, 8)
        self.second = nn.Linear(8, 4)
        with torch.no_grad():
            self.first.weight[DEAD] = 1e-7 * torch.randn(16)  # dead: ~0 weights ...
            self.first.bias[DEAD] = -2.5  # ... and relu(-2.5 + ~0) = 0 on every input
            self.second.weight[:, DEAD] = 1.0  # a wrong constant there would reach the output

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.second(torch.relu(self.first(features)))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dead")
    base = convert_tflite(DeadChannelNet().eval(), {"features": torch.zeros(1, 16)}, folder / "f.tflite")
    rng = np.random.default_rng(0)
    feeds = [{"features": rng.uniform(0, 1, (1, 16)).astype(np.float32)} for _ in range(64)]
    options = Int8Options(task="other", equalize=False, fallback=False)
    with StaticInt8(Path(base.path), feeds, options) as maker:
        model = maker.build()
        result = maker.quantize()
    path = folder / "int8.tflite"
    path.write_bytes(model)
    return Path(base.path), path, feeds, result


def outputs(path: Path, feeds: list[dict], delegate: bool) -> np.ndarray:
    kind = OpResolverType.AUTO if delegate else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=kind)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    rows = []
    for feed in feeds:
        interpreter.set_tensor(inp["index"], feed["features"])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"]).copy())
    return np.concatenate(rows).astype(np.float64)


def test_the_dead_channels_bias_fits_in_int32(built) -> None:
    _, path, _, result = built
    graph = TfliteGraph(path.read_bytes())
    first = next(op for op in graph.ops if op.kind == "FULLY_CONNECTED")
    bias = graph.constant(first.inputs[2])
    assert graph.tensors[first.inputs[2]].type == 2  # int32
    assert abs(int(bias[DEAD])) < 2**31 - 16 * 127 * 255  # room for the accumulator
    scale = graph.tensors[first.inputs[2]].scales[DEAD]
    assert bias[DEAD] * scale == pytest.approx(-2.5, rel=1e-3)  # still the same bias
    assert result.widened and result.widened[0].channels == [DEAD]
    assert result.details()["int32_bias_widened"] == [{"op": result.widened[0].op, "channels": [DEAD]}]


@pytest.mark.parametrize("delegate", [False, True], ids=["builtin-kernels", "xnnpack"])
def test_int8_matches_the_float_model_on_both_kernel_paths(built, delegate: bool) -> None:
    float_path, path, feeds, _ = built
    want = outputs(float_path, feeds, delegate=True)
    got = outputs(path, feeds, delegate=delegate)
    snr = 10 * np.log10(np.sum(want**2) / np.sum((want - got) ** 2))
    assert snr > 40, snr  # 47 dB; without the fix 23 dB on both paths



def test_the_parsed_graph_passed_on_carries_the_widened_scales(built) -> None:
    """`StaticInt8.build` parses the model once and hands the graph to GPTQ and bias correction after the
    widening: the scales in it must be the ones now in the file, or they would round at the old scales."""
    float_path, _, feeds, _ = built
    options = Int8Options(task="other", equalize=False, fallback=False)
    with StaticInt8(float_path, feeds, options) as maker:
        model = maker.ai_edge_quantized()
        graph = TfliteGraph(model)
        before = TfliteGraph(model)
        widened = fit_int32_biases(model, maker.graph, graph)
    assert widened and widened[0].channels == [DEAD]
    after = TfliteGraph(model)
    for passed_on, parsed in zip(graph.tensors, after.tensors, strict=True):
        if parsed.scales is None:
            assert passed_on.scales is None
        else:
            np.testing.assert_array_equal(passed_on.scales, parsed.scales)
    first = next(op for op in after.ops if op.kind == "FULLY_CONNECTED")
    for tensor in first.inputs[1:3]:  # the weight and the bias scale of the dead channel did change
        assert after.tensors[tensor].scales[DEAD] > before.tensors[tensor].scales[DEAD]
