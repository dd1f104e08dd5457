"""Activation statistics for static int8: ranges (min/max, percentile or MSE-optimal) and input means.

One pass of the float .tflite over the calibration feeds (LiteRT with every intermediate tensor kept)
collects, per activation tensor ai-edge-quantizer will quantize:
- the true min/max over all samples (`Quantizer.calibrate`'s default moving average follows only the
  last ~20 samples and clips larger activations; the validator's gates judge the worst sample);
- a fixed-size random subsample of its values, from which `percentile` (99.99th) or `mse` (the clip
  range minimising the int8 rounding + clipping error) narrow ranges that a few outliers stretch;
- for the inputs of weighted ops, the mean over samples at every position, which bias correction needs;
- for the inputs of weighted ops, on an evenly spread subset of the samples, the second moments of the
  input patches that GPTQ weight rounding needs (`gptq.py`).

ai-edge-quantizer is asked (on one sample) which tensors it wants statistics for and in what shape, so
the result is exactly its QSV format and `Quantizer.quantize` takes it unchanged.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobex.quantize.rounding import ConvGeometry, InputMoments

RANGE_METHODS = ("minmax", "percentile", "mse")
PERCENTILE = 99.99
_SUBSAMPLE = 65536  # values kept per tensor over the whole calibration set
_VALID = 3e38  # ai-edge-quantizer ignores values beyond this (e.g. -inf padding constants)



def to_nchw(value: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """A TFLite activation (NHWC) as the NCHW input `InputMoments` expects (FC inputs stay as they are)."""
    return value if geometry.is_linear else np.ascontiguousarray(np.transpose(value, (0, 3, 1, 2)))

@dataclass
class Calibration:
    """What quantization and bias correction need from the calibration data."""

    qsvs: dict[str, dict[str, np.ndarray]]  # tensor name -> {"min", "max"}, ai-edge-quantizer's QSV format
    means: dict[str, np.ndarray]  # tensor name -> mean over samples (same shape as the tensor)
    samples: int
    method: str
    narrowed: dict[str, tuple[float, float, float, float]] = field(default_factory=dict)  # name -> old/new range
    moments: dict[str, InputMoments] = field(default_factory=dict)  # weighted op scope -> its input moments

    def summary(self) -> str:
        text = f"{self.method} activation ranges over {self.samples} calibration samples"
        if self.narrowed:
            text += f" ({len(self.narrowed)} of {len(self.qsvs)} ranges narrowed)"
        return text


def calibrate(
    float_model: bytes,
    recipe: list[dict[str, Any]] | None,
    feeds: list[dict[str, np.ndarray]],
    *,
    signature: str,
    method: str = "minmax",
    mean_of: Iterable[str] = (),
    moments_of: dict[str, tuple[str, ConvGeometry]] | None = None,
    moment_samples: int = 64,
    num_threads: int = 1,
) -> Calibration:
    """Statistics of the float model `float_model` on `feeds` (see module docstring).

    With `recipe=None` no activation ranges are collected (weight-only variants need only the means
    and moments of the weighted ops' inputs)."""
    if method not in RANGE_METHODS:
        raise ValueError(f"unknown range estimation {method!r}; use one of {', '.join(RANGE_METHODS)}")
    if not feeds:
        raise ValueError("calibration needs at least one sample")
    from ai_edge_quantizer import calibrator, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils, tfl_interpreter_utils

    template: dict[str, Any] = {}
    if recipe is not None:
        manager = recipe_manager.RecipeManager()
        manager.load_quantization_recipe(recipe)
        probe = calibrator.Calibrator(float_model, num_threads=num_threads, qsv_update_func=qsv_utils.min_max_update)
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar cannot be switched off
            probe.calibrate({signature: feeds[:1]}, manager)
        template = probe.get_model_qsvs()

    with warnings.catch_warnings():  # "intended for debugging": keeping every tensor is the point here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tfl_interpreter_utils.create_tfl_interpreter(
            float_model, use_xnnpack=True, num_threads=num_threads, preserve_all_tensors=True
        )
    subgraph = tfl_interpreter_utils.get_signature_main_subgraph_index(interpreter, signature)
    wanted_means = set(mean_of)
    lo: dict[str, float] = {}
    hi: dict[str, float] = {}
    kept: dict[str, list[np.ndarray]] = {name: [] for name in template}
    sums: dict[str, np.ndarray] = {}
    per_sample = max(64, _SUBSAMPLE // len(feeds))
    rng = np.random.default_rng(0)
    moments = {scope: InputMoments(geometry) for scope, (_, geometry) in (moments_of or {}).items()}
    moment_picks = set(np.linspace(0, len(feeds) - 1, min(moment_samples, len(feeds))).round().astype(int).tolist())
    for index, feed in enumerate(feeds):
        tfl_interpreter_utils.invoke_interpreter_signature(interpreter, feed, signature)
        content = tfl_interpreter_utils.get_tensor_name_to_content_map(interpreter, subgraph)
        for name in template:
            value = content.get(name)
            if value is None:
                continue
            flat = np.asarray(value, dtype=np.float32).ravel()
            flat = flat[np.abs(flat) < _VALID]
            if flat.size == 0:
                continue
            lo[name] = min(lo.get(name, np.inf), float(flat.min()))
            hi[name] = max(hi.get(name, -np.inf), float(flat.max()))
            if method != "minmax":
                take = flat if flat.size <= per_sample else rng.choice(flat, per_sample, replace=False)
                kept[name].append(take)
        for name in wanted_means:
            value = content.get(name)
            if value is not None:
                value = np.asarray(value, dtype=np.float64)
                sums[name] = value if name not in sums else sums[name] + value
        if index in moment_picks:
            for scope, (name, geometry) in (moments_of or {}).items():
                value = content.get(name)
                if value is not None:
                    moments[scope].add(to_nchw(np.asarray(value, dtype=np.float32), geometry))

    qsvs: dict[str, dict[str, np.ndarray]] = {}
    narrowed: dict[str, tuple[float, float, float, float]] = {}
    for name, qsv in template.items():
        if name not in lo:
            qsvs[name] = qsv
            continue
        new_lo, new_hi = lo[name], hi[name]
        if method != "minmax" and kept[name]:
            new_lo, new_hi = _estimate(np.concatenate(kept[name]), lo[name], hi[name], method)
            if (new_lo, new_hi) != (lo[name], hi[name]):
                narrowed[name] = (lo[name], hi[name], new_lo, new_hi)
        shape = np.shape(qsv["min"])
        qsvs[name] = {
            "min": np.full(shape, new_lo, dtype=np.float32),
            "max": np.full(shape, new_hi, dtype=np.float32),
        }
    means = {name: (total / len(feeds)).astype(np.float32) for name, total in sums.items()}
    moments = {scope: m for scope, m in moments.items() if m.samples}
    return Calibration(qsvs=qsvs, means=means, samples=len(feeds), method=method, narrowed=narrowed, moments=moments)


def _estimate(values: np.ndarray, lo: float, hi: float, method: str) -> tuple[float, float]:
    """A narrower [lo, hi] (always containing 0 and inside the true range) for percentile or mse."""
    if hi - lo <= 0:
        return lo, hi
    if method == "percentile":
        new_lo = min(0.0, float(np.percentile(values, 100 - PERCENTILE))) if lo < 0 else lo
        new_hi = max(0.0, float(np.percentile(values, PERCENTILE))) if hi > 0 else hi
        return max(lo, new_lo), min(hi, new_hi)
    # mse: shrink the range towards 0 by a common factor; keep the factor with the least error.
    best, best_err = 1.0, _int8_error(values, lo, hi)
    for factor in np.linspace(0.2, 0.99, 80):
        err = _int8_error(values, lo * factor if lo < 0 else lo, hi * factor if hi > 0 else hi)
        if err < best_err * 0.999:  # prefer the full range unless narrowing clearly helps
            best, best_err = float(factor), err
    return (lo * best if lo < 0 else lo), (hi * best if hi > 0 else hi)


def _int8_error(values: np.ndarray, lo: float, hi: float) -> float:
    """Mean squared error of asymmetric int8 quantization with range [lo, hi] (zero point nudged as TFLite does)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0
    if scale <= 0:
        return float(np.mean(values**2))
    zero_point = np.clip(np.round(-128 - lo / scale), -128, 127)
    q = np.clip(np.round(values / scale) + zero_point, -128, 127)
    return float(np.mean(((q - zero_point) * scale - values) ** 2))
