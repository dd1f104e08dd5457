"""Calibrated int8 weights in TFLite: GPTQ levels and bias correction for the float-activation variants
(int8-weights, dynamic-int8) and the static int8 one, on a CNN with lossy-to-round depthwise kernels."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mobex.converters.tflite import convert_tflite
from mobex.quantize.tflite.graph import TfliteGraph
from mobex.quantize.tflite.static_int8 import Int8Options
from mobex.runtime.litert import TfliteRunner
from mobex.targets.tflite import quantize_tflite
from tests.quantize.edgenet import edgenet_and_digits

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def edgenet(tmp_path_factory: pytest.TempPathFactory):
    model, x, calib, val = edgenet_and_digits()
    base = convert_tflite(model, {"image": torch.from_numpy(x[:1])}, tmp_path_factory.mktemp("e") / "e.tflite")
    runner = TfliteRunner(base.path)
    reference = np.concatenate([runner.run(f)[0] for f in val])
    return base, calib, val, reference


def snr_db(path: Path, val: list[dict], reference: np.ndarray) -> float:
    runner = TfliteRunner(path)
    out = np.concatenate([runner.run(f)[0] for f in val])
    return float(10 * np.log10((reference**2).sum() / ((out - reference) ** 2).sum()))


def int8_weights(path: Path) -> dict[str, np.ndarray]:
    graph = TfliteGraph(Path(path).read_bytes())
    return {t.name: graph.constant(t.index) for t in graph.tensors if t.is_int8 and graph.constant(t.index) is not None}


@pytest.mark.parametrize("variant", ["int8-weights", "dynamic-int8"])
def test_calibration_data_rounds_and_bias_corrects_float_activation_variants(edgenet, tmp_path: Path, variant) -> None:
    base, calib, val, reference = edgenet
    plain = quantize_tflite(base, variant, tmp_path / "plain.tflite")
    tuned = quantize_tflite(base, variant, tmp_path / "tuned.tflite", calibration=calib)

    assert any("chosen by GPTQ" in n and "4 biases corrected" in n for n in tuned.notes), tuned.notes
    assert not any("GPTQ" in n for n in plain.notes)
    assert tuned.size_bytes == plain.size_bytes  # rewritten in place: same tensors, same bytes
    before, after = int8_weights(plain.path), int8_weights(tuned.path)
    assert before.keys() == after.keys()
    assert all(np.abs(after[k].astype(int)).max() <= 127 for k in after)
    gain = snr_db(tuned.path, val, reference) - snr_db(plain.path, val, reference)
    assert gain > 3.0, gain


def test_static_int8_records_the_gptq_rounding(edgenet, tmp_path: Path) -> None:
    base, calib, val, reference = edgenet
    options = Int8Options(fallback=False)
    nearest = quantize_tflite(
        base, "int8", tmp_path / "n.tflite", calibration=calib, int8=replace(options, weight_rounding="nearest")
    )
    gptq = quantize_tflite(base, "int8", tmp_path / "g.tflite", calibration=calib, int8=options)

    details = gptq.details
    assert details["weight_rounding"]["gptq_ops"] >= 3
    assert nearest.details["weight_rounding"]["gptq_ops"] == 0
    assert any("chosen by GPTQ" in n for n in gptq.notes)
    assert snr_db(gptq.path, val, reference) > snr_db(nearest.path, val, reference)


def test_weight_rounding_option_is_checked() -> None:
    with pytest.raises(ValueError, match="weight_rounding"):
        Int8Options(weight_rounding="stochastic")


def test_nearest_weight_rounding_ignores_the_calibration_data(edgenet, tmp_path: Path) -> None:
    """`[quantization] weight_rounding = "nearest"`: the same bytes as without calibration data."""
    base, calib, _, _ = edgenet
    plain = quantize_tflite(base, "int8-weights", tmp_path / "plain.tflite")
    options = Int8Options(weight_rounding="nearest")
    nearest = quantize_tflite(base, "int8-weights", tmp_path / "nearest.tflite", calibration=calib, int8=options)
    assert nearest.path.read_bytes() == plain.path.read_bytes()
    assert any('weight_rounding = "nearest"' in n for n in nearest.notes), nearest.notes



def test_candidate_builds_reuse_gptq_levels_and_give_the_same_bytes(edgenet, monkeypatch) -> None:
    """The search builds dozens of candidates of one float model; GPTQ's levels for an op depend only on its
    weights, scales and input statistics, so later builds take them from the cache: same bytes, no GPTQ run."""
    from mobex.quantize.tflite import gptq as int8_weights
    from mobex.quantize.tflite.static_int8 import StaticInt8

    base, calib, _, _ = edgenet
    with StaticInt8(Path(base.path), calib, Int8Options(fallback=False)) as maker:
        one_float = frozenset({maker.graph.quantizable_ops()[0].scope})
        first = maker.build()
        assert len(maker._gptq) >= 3 and any(v is not None for v in maker._gptq.values())
        runs = []
        real = int8_weights._gptq_levels
        monkeypatch.setattr(int8_weights, "_gptq_levels", lambda *a: runs.append(a) or real(*a))  # counts runs
        again, cached_candidate = maker.build(), maker.build(one_float)
        assert runs == []  # the same ops, scales and nearest levels: every op came from the cache
        maker._gptq.clear()
        fresh, fresh_candidate = maker.build(), maker.build(one_float)
        assert runs  # an empty cache runs GPTQ again
    assert again == first == fresh
    assert cached_candidate == fresh_candidate != first
