"""The graph view the int8 work reads, and `with_float_islands`: cheap ops between float ops stay float.

The model normalises its raw input inside the graph ((x - 8) / 8, as EfficientNet-Lite0 does with pixels),
then runs a stem convolution, a depthwise convolution and a head. When the stem and the depthwise convolution
fall back to float, the normalisation in int8 would be an island: QUANTIZE, SUB, MUL, DEQUANTIZE, all cost.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.quantize.tflite.graph import TfliteGraph, with_float_islands
from mobex.quantize.tflite.static_int8 import Int8Options, StaticInt8
from mobex.runtime.litert import TfliteRunner

torch.set_num_threads(1)


class NormalisedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - 8.0) / 8.0
        x = torch.clamp(self.dw(torch.clamp(self.stem(x), 0, 6)), 0, 6)
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory):
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    base = convert_tflite(
        NormalisedNet().eval(), {"image": torch.zeros(1, 3, 8, 8)}, tmp_path_factory.mktemp("islands") / "n.tflite"
    )
    x = np.repeat(load_digits().images.astype(np.float32)[:, None], 3, axis=1)  # grey digits as RGB
    feeds = [{"image": x[i : i + 1]} for i in range(48)]
    graph = TfliteGraph(Path(base.path).read_bytes())
    return base, feeds, graph


def ops_of(graph: TfliteGraph, kind: str) -> list:
    return [op for op in graph.ops if op.kind == kind]


def test_the_float_graph_has_the_normalisation_and_both_convolutions(net) -> None:
    _, _, graph = net
    assert ops_of(graph, "SUB") or ops_of(graph, "ADD")
    assert ops_of(graph, "MUL") or ops_of(graph, "DIV")
    assert len(ops_of(graph, "CONV_2D")) == 1 and len(ops_of(graph, "DEPTHWISE_CONV_2D")) == 1


def test_cheap_ops_between_a_float_input_and_float_convolutions_join_the_float_set(net) -> None:
    _, _, graph = net
    (stem,), (dw,) = ops_of(graph, "CONV_2D"), ops_of(graph, "DEPTHWISE_CONV_2D")
    before_stem = [op for op in graph.quantizable_ops() if op.index < stem.index]
    assert before_stem, "the normalisation (and layout ops) come before the stem"
    grown = with_float_islands(graph, frozenset({stem.scope, dw.scope}))
    assert grown == {stem.scope, dw.scope, *(op.scope for op in before_stem)}
    # Nothing after the depthwise convolution joins: its readers (MEAN, the head) are int8.
    assert all(op.index < stem.index or op.scope in (stem.scope, dw.scope) for op in graph.ops if op.scope in grown)


def test_no_island_when_a_border_stays_int8(net) -> None:
    _, _, graph = net
    (stem,), (dw,) = ops_of(graph, "CONV_2D"), ops_of(graph, "DEPTHWISE_CONV_2D")
    assert with_float_islands(graph, frozenset()) == frozenset()  # full int8 is untouched
    # Only the depthwise convolution in float: the normalisation feeds the int8 stem, so it stays int8.
    assert with_float_islands(graph, frozenset({dw.scope})) == {dw.scope}
    # int8 model input (int8_io): the normalisation reads an int8 tensor, so int8 costs no extra QUANTIZE.
    assert with_float_islands(graph, frozenset({stem.scope, dw.scope}), float_io=False) == {stem.scope, dw.scope}


def test_a_build_with_the_convolutions_in_float_has_no_int8_island(net, tmp_path: Path) -> None:
    base, feeds, graph = net
    (stem,), (dw,) = ops_of(graph, "CONV_2D"), ops_of(graph, "DEPTHWISE_CONV_2D")
    options = Int8Options(task="classification", equalize=False, fallback=False)
    with StaticInt8(Path(base.path), feeds, options) as maker:
        model = maker.build(frozenset({stem.scope, dw.scope}))
        full = TfliteGraph(maker.build())
        reported, islands = maker._with_islands([stem, dw])  # what quantization_details lists, and marks as islands
    assert [op.index for op in reported] == [op.index for op in graph.ops if op.index <= dw.index]
    assert islands == {op.scope for op in graph.ops if op.index < stem.index}
    built = TfliteGraph(model)
    # Full int8 quantizes the input first; with the float stem, the first QUANTIZE comes after the depthwise
    # convolution, and no DEQUANTIZE turns an int8 activation back into float before the output.
    assert full.ops[0].kind == "QUANTIZE"
    first_quantize = next(op.index for op in built.ops if op.kind == "QUANTIZE")
    assert first_quantize > ops_of(built, "DEPTHWISE_CONV_2D")[0].index
    for op in ops_of(built, "DEQUANTIZE"):  # int8 weights unpacked for float compute, or the float model output
        assert built.constant(op.inputs[0]) is not None or op.outputs[0] in built.output_tensors
    # The model runs and computes the same function, up to int8 noise.
    path = tmp_path / "built.tflite"
    path.write_bytes(model)
    ref, got = TfliteRunner(Path(base.path)), TfliteRunner(path)
    a = np.concatenate([ref.run(f)[0] for f in feeds])
    b = np.concatenate([got.run(f)[0] for f in feeds])
    assert 10 * np.log10(np.sum(a**2) / np.sum((a - b) ** 2)) > 20


def test_the_search_trials_name_the_island_ops_their_builds_add(net) -> None:
    base, feeds, graph = net
    (stem,), (dw,) = ops_of(graph, "CONV_2D"), ops_of(graph, "DEPTHWISE_CONV_2D")
    options = Int8Options(task="classification", equalize=False, fallback=False)
    with StaticInt8(Path(base.path), feeds, options) as maker:
        both = maker._island_labels(frozenset({stem.scope, dw.scope}))
        alone = maker._island_labels(frozenset({dw.scope}))
    assert both == [op.label for op in graph.ops if op.index < stem.index]
    assert alone == []
