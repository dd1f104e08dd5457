"""Activation range estimation for PT2E: min/max, percentile or MSE, the same choices as TFLite int8.

`RangeObserver` is a torchao MinMaxObserver (true min/max over every calibration sample, not a moving
average) that also keeps a random subsample of the values it sees. With `percentile` or `mse` its
`calculate_qparams` narrows the range with the TFLite pipeline's own estimator
(`mobex.quantize.tflite.calibration._estimate`: the 99.99th percentile, or the clip range minimising the
int8 rounding + clipping error of asymmetric int8, which is what XNNPACK's per-tensor activations are).
The narrowed range is computed once and kept, so copies of a calibrated observer (the fallback search
reuses one calibration for every candidate) do not redo it.

`histogram` keeps ExecuTorch's default (torchao's HistogramObserver) for comparison.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from mobex.quantize.tflite.calibration import RANGE_METHODS, _estimate

OBSERVED_RANGES = (*RANGE_METHODS, "histogram")
_PER_CALL = 512  # values kept from each observed tensor per forward call
_KEPT = 65536  # values kept in all (a random subset when more were seen)


def range_observer(method: str) -> Any:
    """The observer constructor for `method` (one of OBSERVED_RANGES but `histogram`)."""
    if method not in RANGE_METHODS:
        raise ValueError(f"unknown range estimation {method!r}; use one of {', '.join(OBSERVED_RANGES)}")
    return _observer_class().with_args(method=method, eps=2**-12)


@functools.cache
def _observer_class() -> type:
    import torch
    from torchao.quantization.pt2e.observer import MinMaxObserver

    class RangeObserver(MinMaxObserver):
        """MinMaxObserver + a subsample of the values, narrowed by `method` (module docstring)."""

        def __init__(self, method: str = "minmax", **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.method = method
            self._values: list[np.ndarray] = []
            self._rng = np.random.default_rng(0)
            self._range: tuple[float, float] | None = None

        def forward(self, x_orig: torch.Tensor) -> torch.Tensor:
            super().forward(x_orig)
            if self.method != "minmax" and x_orig.numel():
                flat = x_orig.detach().float().reshape(-1).numpy()
                take = flat if flat.size <= _PER_CALL else self._rng.choice(flat, _PER_CALL, replace=False)
                self._values.append(np.array(take))
                self._range = None
            return x_orig

        def narrowed_range(self) -> tuple[float, float]:
            """The (min, max) the quantization parameters come from."""
            if self._range is None:
                lo, hi = float(self.min_val), float(self.max_val)
                if self.method != "minmax" and self._values and np.isfinite([lo, hi]).all():
                    values = np.concatenate(self._values)
                    if values.size > _KEPT:
                        values = self._rng.choice(values, _KEPT, replace=False)
                    lo, hi = _estimate(values, lo, hi, self.method)
                self._range = (lo, hi)
            return self._range

        def calculate_qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            lo, hi = self.narrowed_range()
            return self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))

    return RangeObserver
