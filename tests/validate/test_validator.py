"""What the validator puts in report.json for a real build: parity, task metrics, latency, memory."""

from __future__ import annotations

import numpy as np
import pytest

from mobex.runtime.latency import HOST_NOTE


def _variant(report: dict, vid: str) -> dict:
    return next(v for v in report["variants"] if v["id"] == vid)


def test_parity_and_task_metrics_of_every_variant(built_digits) -> None:
    report = built_digits.report
    assert [v["id"] for v in report["variants"]] == ["android/fp32", "android/dynamic-int8", "ios/fp32", "ios/fp16"]
    ref = report["reference"]["metrics"]
    assert {"accuracy", "precision", "recall", "f1", "top5_accuracy"} <= set(ref)
    for v in report["variants"]:
        p = v["parity"]
        for key in ("max_abs_error", "mean_abs_error", "max_rel_error", "mean_rel_error", "cosine_min", "cosine_mean",
                    "snr_db", "top1_agreement", "top5_agreement", "accuracy", "accuracy_drop", "precision", "recall",
                    "f1", "f1_drop"):  # fmt: skip
            assert isinstance(p[key], float), (v["id"], key)
        assert p["accuracy_reference"] == ref["accuracy"] and p["f1_reference"] == ref["f1"]
        assert p["accuracy_drop"] == pytest.approx(ref["accuracy"] - p["accuracy"])
        hist = p["outputs"][0]["abs_error_histogram"]
        assert sum(hist["counts"]) == p["samples"] * 10  # every logit of every sample, once
    # fp32 is near-exact on both platforms; the fp16 program really computes in fp16.
    assert _variant(report, "android/fp32")["parity"]["max_abs_error"] < 1e-4
    assert _variant(report, "ios/fp32")["parity"]["max_abs_error"] < 1e-4
    assert 1e-4 < _variant(report, "ios/fp16")["parity"]["max_abs_error"] < 0.1
    assert _variant(report, "ios/fp16")["backend"] == "mil-reference"


def test_latency_with_load_time_and_peak_memory(built_digits) -> None:
    report = built_digits.report
    assert report["latency_note"] == HOST_NOTE
    entries = [report["reference"]] + [v for v in report["variants"] if v["target"] == "tflite"]
    for entry in entries:
        assert [lat["threads"] for lat in entry["latency_by_threads"]] == [1, 2]
        for lat in entry["latency_by_threads"]:
            assert lat["runs"] == 10 and lat["warmup"] == 2 and len(lat["samples_ms"]) == 10
            assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
            assert lat["p50_ms"] == pytest.approx(float(np.percentile(lat["samples_ms"], 50)), rel=1e-3, abs=1e-3)
            assert lat["load_ms"] > 0 and lat["throughput_per_s"] > 0
            assert lat["peak_memory_bytes"] is not None and lat["peak_memory_bytes"] >= 0
            assert lat["memory_method"] in ("linux-vmhwm", "ru_maxrss-growth") and lat["host"]
    for v in report["variants"]:
        if v["target"] == "coreml":
            assert v["latency"] is None and any("not the Core ML runtime" in n for n in v["notes"])


def test_data_checks_list_what_was_checked(built_digits) -> None:
    checks = {c["name"]: c for c in built_digits.report["data_checks"]}
    for name in ("shape", "dtype", "finite", "range", "preprocessing_range"):
        assert f"validation.image.{name}" in checks, name
    assert checks["validation.image.preprocessing_range"]["passed"]
    assert "within [preprocessing].range [0, 1]" in checks["validation.image.preprocessing_range"]["detail"]
    assert checks["validation.labels.range"]["detail"] == "class indices in [0, 9]"
