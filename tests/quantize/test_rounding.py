"""GPTQ weight rounding: the input moments describe the layer exactly, and the rounding lowers its output error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mobex.quantize.rounding import (
    ConvGeometry,
    InputMoments,
    gptq_palettize,
    gptq_round,
    mean_output_error,
    output_error,
)

torch.set_num_threads(1)


def conv(x: np.ndarray, w: np.ndarray, geometry: ConvGeometry) -> np.ndarray:
    """The reference: torch's conv2d with the geometry's explicit padding, in float64."""
    (top, bottom), (left, right) = geometry.pads
    xt = F.pad(torch.from_numpy(x).double(), (left, right, top, bottom))
    return F.conv2d(xt, torch.from_numpy(w).double(), None, geometry.strides, 0, geometry.dilations, geometry.groups)


@pytest.mark.parametrize(("groups", "c_in", "c_out"), [(1, 6, 4), (6, 6, 6), (2, 6, 4)])
def test_moments_give_the_exact_output_error_and_mean_shift(groups: int, c_in: int, c_out: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 1.0, size=(3, c_in, 9, 9)).astype(np.float32)
    weight = rng.normal(size=(c_out, c_in // groups, 3, 3))
    delta = rng.normal(size=weight.shape)
    geometry = ConvGeometry((3, 3), (2, 2), (1, 1), ((0, 1), (1, 0)), groups)  # stride 2, TF-style "SAME"
    moments = InputMoments(geometry)
    moments.add(x[:2])
    moments.add(x[2:])  # batches accumulate
    y = conv(x, delta, geometry)
    assert moments.samples == 3 and moments.rows == 3 * 4 * 4  # 10x10 padded, 3x3 kernel, stride 2
    assert output_error(weight + delta, weight, moments) == pytest.approx(float((y**2).sum()), rel=1e-9)
    np.testing.assert_allclose(
        mean_output_error(delta.astype(np.float32), moments), y.mean(dim=(0, 2, 3)).numpy(), rtol=1e-4, atol=1e-5
    )


def test_linear_moments_flatten_leading_dims() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)  # e.g. tokens of a transformer
    moments = InputMoments(ConvGeometry())
    moments.add(x)
    delta = rng.normal(size=(3, 8))
    y = x.reshape(-1, 8).astype(np.float64) @ delta.T
    assert output_error(delta, np.zeros_like(delta), moments) == pytest.approx(float((y**2).sum()), rel=1e-9)
    np.testing.assert_allclose(mean_output_error(delta.astype(np.float32), moments), y.mean(0), rtol=1e-4, atol=1e-5)


def edge_filters(rng: np.random.Generator, channels: int) -> np.ndarray:
    """Depthwise kernels of large weights that nearly cancel (BatchNorm-folded high-pass filters)."""
    w = rng.normal(size=(channels, 1, 3, 3))
    w -= w.mean(axis=(2, 3), keepdims=True)
    return w * rng.uniform(5, 50, size=(channels, 1, 1, 1))


def test_gptq_lowers_the_output_error_of_a_depthwise_layer_on_positive_inputs() -> None:
    rng = np.random.default_rng(2)
    channels = 16
    geometry = ConvGeometry((3, 3), (1, 1), (1, 1), ((1, 1), (1, 1)), channels)
    smooth = F.avg_pool2d(torch.from_numpy(rng.uniform(0, 6, size=(24, channels, 14, 14))), 3, 1, 1).numpy()
    calib, held_out = smooth[:16].astype(np.float32), smooth[16:].astype(np.float32)  # ReLU6-like, spatially smooth
    moments = InputMoments(geometry)
    moments.add(calib)
    weight = edge_filters(rng, channels)
    scale = np.abs(weight).reshape(channels, -1).max(1).reshape(-1, 1, 1, 1) / 127
    nearest = np.clip(np.round(weight / scale), -127, 127)

    codes = gptq_round(weight, scale, moments)

    assert codes is not None and codes.shape == weight.shape and codes.dtype == np.int64
    assert codes.min() >= -127 and codes.max() <= 127
    assert np.abs(codes - nearest).max() <= 3  # a refinement of the rounding, not a new quantizer
    assert output_error(codes * scale, weight, moments) < 0.7 * output_error(nearest * scale, weight, moments)
    check = InputMoments(geometry)
    check.add(held_out)  # and it generalises to inputs it did not see
    assert output_error(codes * scale, weight, check) < 0.8 * output_error(nearest * scale, weight, check)


def test_gptq_keeps_dead_channels_at_the_offset_and_respects_asymmetric_ranges() -> None:
    rng = np.random.default_rng(3)
    moments = InputMoments(ConvGeometry())
    moments.add(rng.normal(size=(64, 8)).astype(np.float32))
    weight = rng.normal(size=(4, 8))
    weight[1] = 0.0
    scale = np.abs(weight).max(1, keepdims=True) / 127
    offset = np.full((4, 1), 127.0)  # uint8 symmetric: levels 0..254 around 127
    codes = gptq_round(weight, scale, moments, offset=offset, qmin=0, qmax=254)
    assert codes is not None
    assert np.all(codes[1] == 127)
    assert codes.min() >= 0 and codes.max() <= 254
    assert np.abs((codes - offset) * scale - weight).max() <= 3 * scale.max()


def test_too_few_calibration_rows_keep_round_to_nearest() -> None:
    moments = InputMoments(ConvGeometry())
    moments.add(np.ones((4, 64), np.float32))  # 4 rows for 64 columns
    weight = np.ones((2, 64))
    assert gptq_round(weight, np.full((2, 1), 1 / 127), moments) is None
    assert gptq_palettize(weight, np.zeros((2, 4)), moments) is None


def test_gptq_palette_indices_beat_nearest_entry() -> None:
    rng = np.random.default_rng(4)
    moments = InputMoments(ConvGeometry())
    inputs = rng.normal(size=(256, 32)) + rng.normal(size=(1, 32)) * 3  # correlated, non-zero mean
    moments.add(inputs.astype(np.float32))
    weight = rng.normal(size=(8, 32))
    palette = np.linspace(-2.5, 2.5, 16)
    rows = np.broadcast_to(palette, (8, 16))
    nearest = np.abs(weight[..., None] - palette).argmin(-1)
    codes = gptq_palettize(weight, rows, moments)
    assert codes is not None and codes.min() >= 0 and codes.max() <= 15
    assert output_error(palette[codes], weight, moments) < 0.8 * output_error(palette[nearest], weight, moments)
