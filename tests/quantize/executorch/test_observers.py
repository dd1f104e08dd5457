"""RangeObserver: min/max like torchao's, percentile and MSE narrowing as in the TFLite pipeline, computed once."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

pytest.importorskip("torchao.quantization.pt2e", reason="torchao's PT2E is needed for ExecuTorch int8")

from mobex.quantize.executorch.observers import range_observer  # noqa: E402

_INT8 = {"dtype": torch.int8, "qscheme": torch.per_tensor_affine, "quant_min": -128, "quant_max": 127}


def _observed(method: str, *tensors: torch.Tensor):  # noqa: ANN202 - a torchao observer
    observer = range_observer(method)(**_INT8)
    for t in tensors:
        observer(t)
    return observer


def _with_outlier() -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    batches = [torch.from_numpy(rng.standard_normal(4096).astype(np.float32)) for _ in range(8)]
    batches[3][7] = 60.0  # one value stretches the min/max range 15x
    return batches


def test_minmax_is_torchaos_minmax_over_every_sample() -> None:
    from torchao.quantization.pt2e.observer import MinMaxObserver

    batches = _with_outlier()
    ours, reference = _observed("minmax", *batches), MinMaxObserver(eps=2**-12, **_INT8)
    for t in batches:
        reference(t)
    assert [x.item() for x in ours.calculate_qparams()] == [x.item() for x in reference.calculate_qparams()]
    assert ours.narrowed_range() == (float(min(t.min() for t in batches)), 60.0)


@pytest.mark.parametrize(("method", "most"), [("percentile", 10.0), ("mse", 50.0)])
def test_percentile_and_mse_narrow_a_range_an_outlier_stretches(method: str, most: float) -> None:
    true_lo = float(min(t.min() for t in _with_outlier()))
    lo, hi = _observed(method, *_with_outlier()).narrowed_range()
    # The bulk of N(0, 1) is kept; the outlier at 60 is clipped (mse shrinks both ends by one factor).
    assert true_lo <= lo < -2.0 and 3.0 < hi < most
    scale, _ = _observed(method, *_with_outlier()).calculate_qparams()
    assert scale.item() == pytest.approx((hi - lo) / 255, rel=1e-5)


def test_the_narrowed_range_is_computed_once_and_travels_with_copies() -> None:
    observer = _observed("mse", *_with_outlier())
    first = observer.narrowed_range()
    observer._values.clear()  # a copy made after calibration needs no values to know its range
    assert copy.deepcopy(observer).narrowed_range() == first


def test_unknown_method_is_refused() -> None:
    with pytest.raises(ValueError, match="minmax, percentile, mse, histogram"):
        range_observer("kl")
