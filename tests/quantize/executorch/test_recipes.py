"""quantize_executorch: the int8 .pte, measured in ExecuTorch's runtime; on digits_cnn with its real data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("executorch.exir", reason="executorch (the optional `executorch` extra) is not installed")

from mobex.converters.executorch import convert_executorch  # noqa: E402
from mobex.errors import DataError, UsageError  # noqa: E402
from mobex.quantize.executorch.recipes import quantize_executorch  # noqa: E402
from mobex.quantize.executorch.static_int8 import EtInt8Options  # noqa: E402
from mobex.recipe import load_recipe  # noqa: E402
from mobex.runtime.executorch import ExecutorchRunner  # noqa: E402
from mobex.runtime.torch_model import TorchRunner  # noqa: E402
from mobex.sources import load_model  # noqa: E402
from tests.conftest import SAMPLES  # noqa: E402
from tests.quantize.executorch.mbnet import digit_feeds  # noqa: E402
from tests.quantize.executorch.test_static_int8 import INT8_GATES, ScaledFeatures, _scaled_feeds  # noqa: E402

torch.set_num_threads(1)


def _agreement(model: torch.nn.Module, path: Path, feeds: list[dict]) -> float:
    runner = ExecutorchRunner(path)
    reference = TorchRunner(model, [s.name for s in runner.inputs])
    return float(np.mean([runner.run(f)[0].argmax() == reference.run(f)[0].argmax() for f in feeds]))


def test_fallback_survives_lowering_and_the_runtime_confirms_the_gate(tmp_path: Path) -> None:
    model = ScaledFeatures().eval()
    options = EtInt8Options(task="classification", limits=INT8_GATES, max_fallback_layers=4)
    variant, details = quantize_executorch(
        model, {"features": torch.zeros(1, 13)}, tmp_path / "scaled-int8.pte", calibration=_scaled_feeds(256, 0),
        output_names=["logits"], options=options, held_out=_scaled_feeds(64, 1),
    )  # fmt: skip
    assert (variant.target, variant.quantization) == ("executorch", "int8")
    assert [s.name for s in variant.outputs] == ["logits"] and variant.inputs[0].dtype == "float32"
    assert details.fallback == ["mul (node mul)"] and details.passed is True
    assert details.metrics_runtime["top1_agreement"] >= 0.98  # measured on the .pte, not the torch twin
    assert any(n.startswith("kept in float (1): mul") for n in variant.notes)
    assert _agreement(model, variant.path, _scaled_feeds(200, 2)) >= 0.97
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scaled-int8.pte"]


@pytest.mark.slow
def test_digits_cnn_int8_keeps_agreement_on_its_real_data_at_a_quarter_of_the_size(tmp_path: Path) -> None:
    recipe = load_recipe(SAMPLES / "digits_cnn" / "recipe.toml")
    model = load_model(recipe)
    example = {"image": torch.from_numpy(digit_feeds("val", 1)[0]["image"])}
    fp32 = convert_executorch(model, example, tmp_path / "fp32.pte")
    options = EtInt8Options(task="classification", limits=INT8_GATES)
    variant, details = quantize_executorch(
        model, example, tmp_path / "int8.pte", calibration=digit_feeds("calib", 256), options=options
    )
    assert details.passed is True and details.fallback == []
    assert variant.size_bytes < 0.3 * fp32.size_bytes
    assert _agreement(model, variant.path, digit_feeds("val", 360)) >= 0.99
    runtime, twin = details.metrics_runtime, details.metrics_torch
    assert abs(runtime["snr_db"] - twin["snr_db"]) < 2.0  # the torch twin the search used tracks the runtime


def test_int64_inputs_and_outputs_survive_int8(tmp_path: Path) -> None:
    from tests.runtime.test_litert import TokensAndFeatures, sample_feed

    rng = np.random.default_rng(0)
    feeds = [{k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in sample_feed(rng).items()}
             for _ in range(64)]  # fmt: skip
    example = {"ids": torch.zeros(1, 6, dtype=torch.int64), "features": torch.zeros(1, 4)}
    variant, details = quantize_executorch(
        TokensAndFeatures().eval(), example, tmp_path / "tokens-int8.pte", calibration=feeds,
        output_names=["logits", "best", "hidden"], options=EtInt8Options(task="classification"),
    )  # fmt: skip
    assert [s.dtype for s in variant.inputs] == ["int64", "float32"]
    assert [s.dtype for s in variant.outputs] == ["float32", "int64", "float32"]
    assert details.metrics_runtime["top1_agreement"] == 1.0 and details.equalization.endswith("no stream to equalize")


def test_bad_calibration_data_is_a_data_error(tmp_path: Path) -> None:
    model, example = ScaledFeatures().eval(), {"features": torch.zeros(1, 13)}
    with pytest.raises(DataError, match="needs calibration data"):
        quantize_executorch(model, example, tmp_path / "m.pte", calibration=None)
    with pytest.raises(DataError, match=r"has shape \[1, 12\]"):
        quantize_executorch(model, example, tmp_path / "m.pte", calibration=[{"features": np.zeros((1, 12))}])
    with pytest.raises(DataError, match="arrays \\['x'\\]"):
        quantize_executorch(model, example, tmp_path / "m.pte", calibration=[{"x": np.zeros((1, 13))}])
    assert list(tmp_path.iterdir()) == []


def test_unknown_range_estimation_is_refused() -> None:
    with pytest.raises(ValueError, match="range_estimation"):
        EtInt8Options(range_estimation="entropy")


def test_missing_executorch_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import mobex.runtime.executorch as et_runtime

    monkeypatch.setattr(et_runtime, "executorch_available", lambda: False)
    with pytest.raises(UsageError, match="int8 variant needs the `executorch` package"):
        quantize_executorch(ScaledFeatures(), {"features": torch.zeros(1, 13)}, tmp_path / "m.pte", calibration=[])
