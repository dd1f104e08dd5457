"""Static int8 of a streaming model: its state output also feeds its head, and its recurrent cell stays float
unless int8 measured better.

The model is one step of a GRU cell (torch's nn.GRUCell, unrolled by litert-torch into FULLY_CONNECTED, SLICE,
LOGISTIC, TANH, MUL, ADD ops named after the cell) whose next state is both a model output and the input of the
head: exactly the graph where ai-edge-quantizer leaves the head reading the dequantized float copy of an int8
tensor, which LiteRT refuses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.quantize.tflite.graph import TfliteGraph, reconnect_int8_readers, recurrent_ops
from mobex.quantize.tflite.static_int8 import Int8Options, StaticInt8
from mobex.runtime.litert import TfliteRunner
from mobex.targets.tflite import quantize_tflite

torch.set_num_threads(1)


class GruStep(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, 32)
        self.cell = nn.GRUCell(32, 32)
        self.head = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor, h: torch.Tensor):
        state = self.cell(torch.relu(self.inp(x)), h)
        return self.head(state), state


@pytest.fixture(scope="module")
def stepped(tmp_path_factory: pytest.TempPathFactory):
    """The fp32 model and calibration feeds with the states the model fed itself over a sequence."""
    model = GruStep().eval()
    rng = np.random.default_rng(0)
    feeds, h = [], torch.zeros(1, 32)
    for _ in range(48):
        x = torch.from_numpy(rng.standard_normal((1, 16)).astype(np.float32))
        feeds.append({"x": x.numpy(), "h": h.numpy().copy()})
        with torch.no_grad():
            _, h = model(x, h)
    example = {"x": torch.from_numpy(feeds[0]["x"]), "h": torch.from_numpy(feeds[0]["h"])}
    base = convert_tflite(model, example, tmp_path_factory.mktemp("gru") / "gru.tflite", output_names=["y", "h_out"])
    return base, feeds


def test_recurrent_ops_are_found_by_the_cell_they_came_from(stepped) -> None:
    base, _ = stepped
    graph = TfliteGraph(Path(base.path).read_bytes())
    found = recurrent_ops(graph)
    assert found and all("GRUCell_cell" in op.label for op in found)
    assert {"FULLY_CONNECTED", "LOGISTIC", "TANH"} <= {op.kind for op in found}
    assert not any("Linear_inp" in op.scope for op in found)  # the input layer is not recurrent


def test_an_output_that_feeds_an_int8_op_is_reconnected(stepped) -> None:
    """Stock ai-edge-quantizer output fails to load; after `reconnect_int8_readers` it loads and runs."""
    base, feeds = stepped
    with StaticInt8(Path(base.path), feeds, Int8Options(equalize=False)) as maker:
        model = maker.ai_edge_quantized(frozenset())  # reconnects inside
        stock = _stock_quantized(maker)
    path = Path(base.path).with_name("stock.tflite")
    path.write_bytes(bytes(stock))
    with pytest.raises(RuntimeError, match="INT8 != FLOAT32|failed to prepare"):
        TfliteRunner(path)
    assert reconnect_int8_readers(stock) == 1
    path.write_bytes(bytes(stock))
    assert bytes(stock) == bytes(model)
    y, state = TfliteRunner(path).run(feeds[5])
    assert y.shape == (1, 4) and state.shape == (1, 32)


def _stock_quantized(maker: StaticInt8) -> bytearray:
    import contextlib
    import io

    from ai_edge_quantizer import quantizer

    from mobex.quantize.tflite.static_int8 import _recipe

    qt = quantizer.Quantizer(maker.float_bytes, _recipe(frozenset(), None, False, maker.int8_weight_ops))
    with contextlib.redirect_stderr(io.StringIO()):
        result = qt.quantize(maker.calibration.qsvs, enable_progress_bar=False, enable_progress_report=False)
    return bytearray(result.quantized_model)


def test_recurrent_ops_stay_float_when_int8_fails_the_limits(stepped, tmp_path: Path) -> None:
    base, feeds = stepped
    strict = Int8Options(limits={"cosine_min": 0.999999, "snr_db": 80.0}, fallback=False)
    variant = quantize_tflite(base, "int8", tmp_path / "int8.tflite", calibration=feeds, int8=strict)
    recurrent = variant.details["recurrent"]
    assert recurrent["kept_float"] is True and "failed the limits" in recurrent["why"]
    assert recurrent["int8"]["snr_db"] < 80 and recurrent["float"]["p50_ms"] > 0  # both were built and measured
    reasons = {layer["name"]: layer["reason"] for layer in variant.details["fallback_layers"]}
    assert reasons and all(r == "recurrent" for name, r in reasons.items() if "GRUCell_cell" in name)
    graph = TfliteGraph(variant.path.read_bytes())
    cell = [op for op in graph.ops if "GRUCell_cell" in op.scope and op.kind in ("LOGISTIC", "TANH")]
    assert cell and all(not graph.tensors[op.outputs[0]].is_int8 for op in cell)  # float compute in the cell
    head = next(op for op in graph.ops if op.kind == "FULLY_CONNECTED" and "Linear_inp" in op.scope)
    assert graph.tensors[head.outputs[0]].is_int8  # the rest of the model is int8


def test_recurrent_ops_go_int8_only_when_measured_better(stepped, tmp_path: Path) -> None:
    """Loose limits: int8 passes, and the decision is then the measured latency, recorded with both numbers."""
    base, feeds = stepped
    loose = Int8Options(limits={"cosine_min": 0.5}, fallback=False)
    variant = quantize_tflite(base, "int8", tmp_path / "int8.tflite", calibration=feeds, int8=loose)
    recurrent = variant.details["recurrent"]
    faster = recurrent["int8"]["p50_ms"] < 0.9 * recurrent["float"]["p50_ms"]
    assert recurrent["kept_float"] is (not faster)
    assert recurrent["why"] == (
        "int8 passed the limits on calibration data and was faster"
        if faster
        else "int8 was not faster than 0.9x the float-recurrent model's p50"
    )
