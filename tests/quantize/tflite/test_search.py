"""The measured float fallback of static int8: it finds the quantization-hostile ops and the gate then passes.

The model is an MLP trained for a second on scikit-learn's digits, then reparametrised without changing
its float function: channel 0 of the first hidden layer is multiplied by 1000 and the next layer's
weights for that channel divided by 1000. One activation channel is then 1000x larger than the others,
so per-tensor int8 of that tensor flattens the other 31 channels to a few levels: a classic outlier.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters.tflite import convert_tflite
from mobex.errors import DataError
from mobex.metrics.parity import parity_summary
from mobex.quantize.tflite.static_int8 import Int8Options, StaticInt8, search_limits
from mobex.runtime.litert import TfliteRunner
from mobex.targets.tflite import quantize_tflite

torch.set_num_threads(1)

GATE = {"top1_agreement": 0.97, "cosine_min": 0.95, "snr_db": 12.0}  # the default int8 gate for classifiers
OPTIONS = Int8Options(
    task="classification", limits=GATE, equalize=False, bias_correction=False, max_fallback_layers=4
)  # fmt: skip


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory):
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    xt, yt = torch.from_numpy(x[:1200]), torch.from_numpy(y[:1200])
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        before = model(torch.from_numpy(x[1200:]))
        model[0].weight[0] *= 1000.0
        model[0].bias[0] *= 1000.0
        model[2].weight[:, 0] /= 1000.0
        after = model(torch.from_numpy(x[1200:]))
    assert torch.allclose(before, after, atol=1e-3)  # same float function
    assert (after.argmax(1).numpy() == y[1200:]).mean() > 0.9  # a trained model
    base = convert_tflite(model, {"features": torch.zeros(1, 64)}, tmp_path_factory.mktemp("hostile") / "mlp.tflite")
    calib = [{"features": row[None]} for row in x[1200:1400]]
    val = [{"features": row[None]} for row in x[1400:1700]]
    return base, calib, val


def validate(path: Path, base_path: Path, feeds: list[dict]) -> dict:
    """Parity on held-out data (never seen by calibration or the search)."""
    ref, got = TfliteRunner(base_path), TfliteRunner(path)
    a = np.concatenate([ref.run(f)[0] for f in feeds])
    b = np.concatenate([got.run(f)[0] for f in feeds])
    return parity_summary(["logits"], [a], [b], task="classification", labels=None, num_classes=None)


def test_the_hostile_layer_falls_back_and_the_gate_passes(hostile, tmp_path: Path) -> None:
    base, calib, val = hostile
    no_fallback = replace(OPTIONS, fallback=False)
    plain = quantize_tflite(base, "int8", tmp_path / "plain.tflite", calibration=calib, int8=no_fallback)
    broken = validate(plain.path, base.path, val)
    assert broken["top1_agreement"] < 0.9, broken["top1_agreement"]  # the outlier really breaks plain int8

    fixed = quantize_tflite(base, "int8", tmp_path / "fixed.tflite", calibration=calib, int8=OPTIONS)
    details = fixed.details
    fallen = [(layer["op"], layer["name"]) for layer in details["fallback_layers"]]
    # Exactly the two ops that touch the outlier tensor: the layer producing it and the one reading it.
    assert fallen == [("FULLY_CONNECTED", "FULLY_CONNECTED Linear_0"),
                      ("FULLY_CONNECTED", "FULLY_CONNECTED Linear_2")], fallen  # fmt: skip
    assert [layer["reason"] for layer in details["fallback_layers"]] == ["sensitive", "sensitive"]  # no islands
    assert details["passed_on_calibration"] is True
    assert details["sensitivity"][0]["name"] in {name for _, name in fallen}  # ranked most damaging
    assert details["search"][0]["fallback"] == [] and not details["search"][0]["passed"]
    assert details["cost"]["size_bytes"]["with_fallback"] > details["cost"]["size_bytes"]["int8"]
    assert any("float fallback of 2 op(s)" in note for note in fixed.notes)

    good = validate(fixed.path, base.path, val)
    for metric, limit in GATE.items():
        assert good[metric] >= limit, (metric, good[metric])


def test_equalization_fixes_the_same_outlier_without_any_fallback(hostile, tmp_path: Path) -> None:
    base, calib, val = hostile
    options = replace(OPTIONS, equalize=True)
    q = quantize_tflite(base, "int8", tmp_path / "eq.tflite", calibration=calib, int8=options)
    details = q.details
    assert details["fallback_layers"] == [] and details["search"] == []
    assert "cross-layer equalization of 2 linear stream(s)" in details["equalization"]
    good = validate(q.path, base.path, val)
    for metric, limit in GATE.items():
        assert good[metric] >= limit, (metric, good[metric])


def test_search_gives_up_cleanly_when_the_budget_is_too_small(hostile) -> None:
    base, calib, _ = hostile
    with StaticInt8(base.path, calib, replace(OPTIONS, max_fallback_layers=1)) as maker:
        made = maker.quantize()
    assert made.passed is False
    assert len(made.fallback) <= 1
    assert made.search is not None and all(not t.passed for t in made.search.trials)


def test_search_limits_ask_for_a_margin_over_the_gate() -> None:
    limits = search_limits({"top1_agreement": 0.97, "cosine_min": 0.95, "snr_db": 12.0, "max_abs_error": 1.0,
                            "accuracy_drop": 0.02, "p50_ms": 5.0})  # fmt: skip
    assert limits["top1_agreement"] == (pytest.approx(0.98), "min")
    assert limits["cosine_min"] == (pytest.approx(0.955), "min")
    assert limits["snr_db"] == (13.0, "min")
    assert limits["max_abs_error"] == (0.9, "max")
    assert "accuracy_drop" not in limits and "p50_ms" not in limits  # not measurable on unlabelled calibration data


def test_a_failed_search_tells_how_to_give_it_more_room(hostile, tmp_path: Path) -> None:
    base, calib, _ = hostile
    q = quantize_tflite(
        base, "int8", tmp_path / "tight.tflite", calibration=calib, int8=replace(OPTIONS, max_fallback_layers=1)
    )
    assert not q.details["passed_on_calibration"]
    assert any("max_fallback_layers" in n and "more ops in float" in n for n in q.notes), q.notes


def test_with_training_data_a_candidate_must_also_pass_on_held_out_samples(hostile) -> None:
    """The search keeps the smallest set that passes on calibration data, so it favours sets that pass there by
    luck; with training data, held-out training samples must agree as well (StaticInt8.search_passes)."""
    base, calib, val = hostile
    good = {"top1_agreement": 1.0, "cosine_min": 1.0, "snr_db": 40.0}
    bad = {"top1_agreement": 0.5, "cosine_min": 0.5, "snr_db": 5.0}
    with StaticInt8(Path(base.path), calib, OPTIONS, training=val) as maker:
        assert len(maker.holdout) == 30  # every 10th of 300
        assert maker.search_passes({**good, **{f"held_out_{k}": v for k, v in good.items()}})
        assert not maker.search_passes({**good, **{f"held_out_{k}": v for k, v in bad.items()}})
        assert not maker.search_passes(good)  # not measured on the held-out samples: not a pass
        plain = maker.search_evaluate(maker.build())
        assert "held_out_top1_agreement" not in plain  # fails on calibration: held-out not even run
        result = maker.quantize()
    assert result.passed
    assert result.metrics["held_out_top1_agreement"] >= search_limits(GATE)["top1_agreement"][0]
    with StaticInt8(Path(base.path), calib, OPTIONS) as maker:  # no training data: calibration alone decides
        assert maker.search_passes(good)


def test_without_fine_tuning_held_out_samples_still_check_the_search(hostile, tmp_path: Path) -> None:
    """[data].training without [quantization.finetune]: the export passes every 10th training sample as
    `held_out`, and the search judges its candidates on them the same way (at most HELD_OUT_MAX of them)."""
    from mobex.quantize.tflite.static_int8 import HELD_OUT_MAX

    base, calib, val = hostile
    held = val[::10]
    with StaticInt8(Path(base.path), calib, OPTIONS, held_out=held) as maker:
        assert maker.training == [] and len(maker.holdout) == 30
        result = maker.quantize()
    assert result.passed and result.metrics["held_out_top1_agreement"] >= 0.98
    many = [{"features": np.full((1, 64), i / 1000, dtype=np.float32)} for i in range(1000)]
    with StaticInt8(Path(base.path), calib, OPTIONS, held_out=many) as maker:
        assert len(maker.holdout) == HELD_OUT_MAX
        assert maker.holdout[0] is many[0] and maker.holdout[-1] is many[-1]  # evenly spread
    q = quantize_tflite(base, "int8", tmp_path / "h.tflite", calibration=calib, int8=OPTIONS, held_out=held)
    assert any("passes the int8 gate" in n and "on held-out training samples: top1_agreement" in n for n in q.notes)
    trials = q.details["search"]
    assert any("held_out_top1_agreement" in t["metrics"] for t in trials if t["passed"])
    assert all(t["passed"] <= ("held_out_top1_agreement" in t["metrics"]) for t in trials)
    bad = [{"features": np.full((1, 64), np.nan, dtype=np.float32)}]
    with pytest.raises(DataError, match="training sample 0: .*NaN"):  # checked like calibration data
        quantize_tflite(base, "int8", tmp_path / "bad.tflite", calibration=calib, int8=OPTIONS, held_out=bad)
