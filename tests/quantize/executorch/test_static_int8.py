"""ExecutorchInt8: calibrated candidates, the gate check on calibration data, and the float fallback search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.quantize.executorch.static_int8 import EtInt8Options, ExecutorchInt8  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds, mbnet  # noqa: E402

torch.set_num_threads(1)
INT8_GATES = {"top1_agreement": 0.97, "cosine_min": 0.95, "snr_db": 12.0}  # mobex.validate.gates, int8 family


class ScaledFeatures(nn.Module):
    """Raw features whose scales span five decades, standardised by a multiply inside the model: one int8 scale
    for the multiply's input crushes the small features (like the wine MLP's raw inputs for TFLite)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("inv_scale", torch.logspace(2, -3, 13))
        self.net = nn.Sequential(nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features * self.inv_scale)


def _scaled_feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    scales = np.logspace(-2, 3, 13)
    return [{"features": (rng.standard_normal((1, 13)) * scales).astype(np.float32)} for _ in range(count)]


def test_search_keeps_the_standardising_multiply_in_float_and_passes() -> None:
    options = EtInt8Options(task="classification", limits=INT8_GATES, max_fallback_layers=4)
    maker = ExecutorchInt8(
        ScaledFeatures().eval(), {"features": torch.zeros(1, 13)}, _scaled_feeds(256, 0), options,
        held_out=_scaled_feeds(64, 1),
    )  # fmt: skip
    result = maker.quantize()
    assert result.plain_metrics["top1_agreement"] < 0.9  # full int8 fails the gate
    assert result.passed is True and [op.kind for op in result.fallback] == ["mul"]
    assert result.metrics["top1_agreement"] >= 0.98 and result.metrics["held_out_top1_agreement"] >= 0.98
    trials = [t.fallback for t in result.search.trials]
    assert trials[0] == [] and trials[-1] == ["mul (node mul)"]
    assert len(result.search.sensitivity) == 3 and result.search.sensitivity[0][0].kind == "mul"


def test_without_limits_nothing_is_checked_and_nothing_falls_back() -> None:
    maker = ExecutorchInt8(ScaledFeatures().eval(), {"features": torch.zeros(1, 13)}, _scaled_feeds(32, 0),
                           EtInt8Options(task="classification"))  # fmt: skip
    result = maker.quantize()
    assert result.passed is None and result.fallback == [] and result.search is None


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse", "histogram"])
def test_every_range_estimation_builds_a_candidate_that_keeps_the_argmax(method: str) -> None:
    model = mbnet()
    options = EtInt8Options(range_estimation=method, task="classification", calibration_samples=32)
    maker = ExecutorchInt8(model, {"image": torch.zeros(1, 1, 8, 8)}, digit_feeds(count=32), options)
    metrics = maker.evaluate(maker.build())
    assert metrics["top1_agreement"] >= 0.9 and metrics["snr_db"] > 15.0
    assert maker.equalization is not None and "ReLU6 output" in maker.equalization


def test_candidates_reuse_the_calibration_without_running_it_again() -> None:
    maker = ExecutorchInt8(mbnet(), {"image": torch.zeros(1, 1, 8, 8)}, digit_feeds(count=16),
                           EtInt8Options(calibration_samples=16))  # fmt: skip
    calls = []
    original = maker._batches
    maker._batches = lambda feeds: calls.append(len(feeds)) or original(feeds)  # count calibration passes
    maker.converted(frozenset({maker.ops[1].scope}))
    assert calls == []  # every observer came from the one calibration
    full, skipped = maker.build(), maker.build(frozenset({maker.ops[1].scope}))
    assert len(skipped) > len(full)  # its weights stay float32: 4 bytes each


def test_options_carry_the_settings_tflite_int8_reads_from_the_recipe() -> None:
    from mobex.quantize.tflite.static_int8 import Int8Options

    tflite = Int8Options(range_estimation="mse", max_fallback_layers=3, fallback=False, task="classification",
                         limits=INT8_GATES, weight_rounding="nearest")  # fmt: skip
    options = EtInt8Options.like(tflite, equalize=False)
    assert (options.range_estimation, options.max_fallback_layers, options.fallback) == ("mse", 3, False)
    assert (options.task, options.limits, options.equalize) == ("classification", INT8_GATES, False)
