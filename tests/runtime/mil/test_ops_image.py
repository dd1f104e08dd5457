"""Image resampling ops in the MIL reference interpreter: iOS17 resize (nearest-neighbour sampling
modes), resample and affine against torch's grid_sample / affine_grid, crop_resize against
TensorFlow's crop_and_resize rule written out in numpy."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from coremltools.converters.mil import Builder as mb

from mobex.runtime.mil import MilReferenceRunner

TOL = 1e-5


def _run(mil, prog, feed, target=ct.target.iOS17):
    runner = MilReferenceRunner(mil.convert_program(prog, target=target))
    assert runner.unsupported_ops() == []
    return runner.run(feed)


@pytest.mark.parametrize(
    ("mode", "n_in", "n_out", "rows"),
    [
        # DEFAULT: round(i * (in - in/out) / (out - 1)), the wrong case (floor gave 0, 0, 1)
        ("DEFAULT", 2, 3, [0, 1, 1]),
        ("DEFAULT", 4, 7, [0, 1, 1, 2, 2, 3, 3]),
        ("ALIGN_CORNERS", 3, 5, [0, 1, 1, 2, 2]),  # 0, .5, 1, 1.5, 2 rounded half up
        ("UNALIGN_CORNERS", 4, 2, [1, 3]),  # .5, 2.5
        ("OFFSET_CORNERS", 3, 4, [0, 1, 1, 2]),  # .25, .75, 1.25, 1.75
    ],
)
def test_resize_nearest_sampling_modes(mil, mode, n_in, n_out, rows):
    x = np.arange(n_in * 2, dtype=np.float32).reshape(1, 1, n_in, 2)

    @mb.program(input_specs=[mb.TensorSpec(x.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.resize(
            x=x, shape=[n_out, 2], resized_dims=np.uint32(2), interpolation_mode="NEAREST_NEIGHBOR", sampling_mode=mode
        )

    (got,) = _run(mil, prog, {"x": x})
    np.testing.assert_array_equal(got, x[:, :, rows, :])


def test_resize_linear_over_three_dims_and_inherited_sizes(mil):
    x = np.random.default_rng(0).uniform(-1, 1, (1, 2, 3, 4, 5)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.resize(x=x, shape=[5, 0, 9], resized_dims=np.uint32(3), sampling_mode="ALIGN_CORNERS")

    (got,) = _run(mil, prog, {"x": x})
    want = F.interpolate(torch.from_numpy(x), size=(5, 4, 9), mode="trilinear", align_corners=True).numpy()
    np.testing.assert_allclose(got, want, atol=TOL)


@pytest.mark.parametrize("align", [True, False])
@pytest.mark.parametrize(
    ("sampling", "padding"), [("bilinear", "constant"), ("bilinear", "border"), ("nearest", "constant")]
)
def test_resample_matches_grid_sample(mil, align, sampling, padding):
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, (2, 3, 5, 6)).astype(np.float32)
    grid = rng.uniform(-1.3, 1.3, (2, 4, 7, 2)).astype(np.float32)  # some points outside the image
    if sampling == "nearest":  # keep points off the half-pixel ties, where rounding conventions differ
        size = np.array([6, 5], np.float32)
        pix = (grid + 1) / 2 * (size - 1) if align else ((grid + 1) * size - 1) / 2
        pix = np.round(pix) + 0.2
        grid = (pix / (size - 1) * 2 - 1 if align else (2 * pix + 1) / size - 1).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec(grid.shape)], opset_version=ct.target.iOS17)
    def prog(x, grid):
        return mb.resample(
            x=x, coordinates=grid, sampling_mode=sampling, padding_mode=padding, padding_value=0.0,
            coordinates_mode="normalized_minus_one_to_one", align_corners=align,
        )  # fmt: skip

    (got,) = _run(mil, prog, {"x": x, "grid": grid})
    want = F.grid_sample(
        torch.from_numpy(x), torch.from_numpy(grid), mode=sampling,
        padding_mode="zeros" if padding == "constant" else padding, align_corners=align,
    ).numpy()  # fmt: skip
    np.testing.assert_allclose(got, want, atol=TOL)


def test_affine_matches_affine_grid(mil):
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 3, 6, 5)).astype(np.float32)
    theta = np.array([[0.9, -0.3, 0.1, 0.2, 1.1, -0.2], [1.2, 0.0, 0.0, 0.0, 0.8, 0.3]], np.float32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec(theta.shape)], opset_version=ct.target.iOS17)
    def prog(x, m):
        return mb.affine(
            x=x, transform_matrix=m, output_height=4, output_width=7, sampling_mode="bilinear",
            padding_mode="constant", padding_value=0.0, coordinates_mode="normalized_minus_one_to_one",
            align_corners=True,
        )  # fmt: skip

    (got,) = _run(mil, prog, {"x": x, "m": theta})
    grid = F.affine_grid(torch.from_numpy(theta.reshape(2, 2, 3)), [2, 3, 4, 7], align_corners=True)
    want = F.grid_sample(torch.from_numpy(x), grid, padding_mode="zeros", align_corners=True).numpy()
    np.testing.assert_allclose(got, want, atol=TOL)


def _tf_crop_and_resize(x, boxes, indices, size, extrapolation):
    """tf.image.crop_and_resize (bilinear), channel-first, written out per output pixel."""
    n_out, (th, tw) = len(boxes), size
    _, c, h, w = x.shape
    out = np.zeros((n_out, c, th, tw), np.float64)
    for n, ((y1, x1, y2, x2), b) in enumerate(zip(boxes, indices, strict=True)):
        for i in range(th):
            y = y1 * (h - 1) + i * (y2 - y1) * (h - 1) / (th - 1) if th > 1 else 0.5 * (y1 + y2) * (h - 1)
            for j in range(tw):
                xx = x1 * (w - 1) + j * (x2 - x1) * (w - 1) / (tw - 1) if tw > 1 else 0.5 * (x1 + x2) * (w - 1)
                if not (0 <= y <= h - 1 and 0 <= xx <= w - 1):
                    out[n, :, i, j] = extrapolation
                    continue
                y0, x0 = int(np.floor(y)), int(np.floor(xx))
                y1_, x1_ = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
                fy, fx = y - y0, xx - x0
                top = x[b, :, y0, x0] * (1 - fx) + x[b, :, y0, x1_] * fx
                bottom = x[b, :, y1_, x0] * (1 - fx) + x[b, :, y1_, x1_] * fx
                out[n, :, i, j] = top * (1 - fy) + bottom * fy
    return out


def test_crop_resize_matches_tf_crop_and_resize(mil):
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 3, 7, 9)).astype(np.float32)
    boxes = np.array([[0.1, 0.2, 0.8, 0.9], [0.5, 0.6, 0.2, 0.1], [-0.2, 0.3, 0.7, 1.2]], np.float32)
    indices = np.array([1, 0, 1], np.int32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.crop_resize(
            x=x, boxes=boxes, box_indices=indices, target_height=4, target_width=5, normalized_coordinates=True,
            box_coordinate_mode="CORNERS_HEIGHT_FIRST", sampling_mode="ALIGN_CORNERS", pad_value=-7.0,
        )  # fmt: skip

    (got,) = _run(mil, prog, {"x": x})
    np.testing.assert_allclose(got, _tf_crop_and_resize(x, boxes, indices, (4, 5), -7.0), atol=TOL)


def test_crop_resize_ios15_roi_crops_every_image(mil):
    """iOS15 form: a 4-value roi crops the same box out of every image, output [N, B, C, h, w]."""
    x = np.arange(2 * 16, dtype=np.float32).reshape(2, 1, 4, 4)
    roi = np.array([1, 1, 2, 2], np.float32).reshape(1, 1, 4, 1, 1)

    @mb.program(input_specs=[mb.TensorSpec(x.shape)], opset_version=ct.target.iOS15)
    def prog(x):
        return mb.crop_resize(x=x, roi=roi, target_height=2, target_width=2, sampling_mode="ALIGN_CORNERS")

    (got,) = _run(mil, prog, {"x": x}, target=ct.target.iOS15)
    np.testing.assert_array_equal(got, x[None, :, :, 1:3, 1:3])
