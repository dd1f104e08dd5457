"""The JSON forms of stored stage values round-trip exactly what reports and bundles read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mobex.artifacts import ExportedVariant, QuantParams, TensorSpec
from mobex.cache import records
from mobex.plugins import parse_request
from mobex.targets.base import BuiltVariant
from mobex.validate.validator import ReferenceResult, VariantResult


def _variant(path: Path) -> ExportedVariant:
    return ExportedVariant(
        target="tflite",
        platform="android",
        quantization="int8",
        path=path,
        inputs=[TensorSpec("image", (1, 3, 8, 8), "int8", QuantParams(0.1 / 3, -128))],
        outputs=[TensorSpec("logits", (1, 10), "float32")],
        size_bytes=1234,
        seconds=1.0 / 3,
        notes=["calibrated on 256 samples"],
        details={"fallback": ["conv_0"], "metrics": {"snr_db": 31.000000000000004}},
        manifest_extras={},
    )


def test_an_exported_variant_round_trips(tmp_path: Path) -> None:
    original = _variant(tmp_path / "m-int8.tflite")
    stored = json.loads(json.dumps(records.variant_to_json(original)))
    back = records.variant_from_json(stored, tmp_path / "restored" / "m-int8.tflite", "android")
    assert back == ExportedVariant(**{**original.__dict__, "path": tmp_path / "restored" / "m-int8.tflite"})
    assert stored["file"] == "m-int8.tflite" and "platform" not in stored and "path" not in stored


def test_a_validation_result_round_trips_into_the_same_report_entry(tmp_path: Path) -> None:
    request = parse_request("android", "int8")
    variant = _variant(tmp_path / "m.tflite")
    result = VariantResult(
        request=request,
        status="validated",
        size_bytes=1234,
        backend="litert",
        parity={"max_abs_error": 0.1 + 0.2, "snr_db": float("inf"), "outputs": [{"name": "logits"}]},
        latency={"p50_ms": 0.25, "threads": 1},
        latency_by_threads=({"p50_ms": 0.25, "threads": 1}, {"p50_ms": 0.2, "threads": 4}),
        gates=({"metric": "top1_agreement", "value": 0.99, "limit": 0.98, "passed": True},),
        passed=True,
        notes=("calibrated on 256 samples", "runs as 1 XNNPACK partition"),
        export_seconds=0.333,
        validate_seconds=2.5,
        artifact=variant,
        reference_stats={"plans": [{"name": "image"}], "features": [[1.5, 2.5]]},
        quantization_details=variant.details,
    )
    stored = json.loads(json.dumps(records.result_to_json(result)))
    back = records.result_from_json(stored, BuiltVariant(request, variant))
    assert back == result
    assert json.dumps(back.to_dict(True)) == json.dumps(result.to_dict(True))


def test_a_reference_run_round_trips_with_its_arrays(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    result = ReferenceResult(
        outputs=[rng.normal(size=(6, 10)).astype(np.float32), np.arange(6, dtype=np.int64)],
        metrics={"accuracy": 5 / 6},
        latency={"p50_ms": 1.25},
        latency_by_threads=[{"p50_ms": 1.25}],
        input_stats={"plans": [], "features": []},
    )
    payload, npz = records.reference_to_json(result)
    back = records.reference_from_json(json.loads(json.dumps(payload)), npz)
    assert len(back.outputs) == 2
    for a, b in zip(result.outputs, back.outputs, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (back.metrics, back.latency, back.latency_by_threads, back.input_stats) == (
        result.metrics, result.latency, result.latency_by_threads, result.input_stats,
    )  # fmt: skip
