"""Image resampling MIL ops: upsample/resize (nearest and bilinear), iOS17 `resize`, `crop_resize`,
`resample` and `affine` (coremltools' `ops/defs/iOS15|16|17/image_resizing.py`).

Sampling grids follow the sampling-mode table of `resize_bilinear`'s docstring (the same as
NeuralNetwork.proto's SamplingMode, written there for an interval [start, end]):

    STRICT_ALIGN_CORNERS  linspace(0, X-1, N)            (N == 1: 0)
    ALIGN_CORNERS         linspace(0, X-1, N)            (N == 1: (X-1)/2)
    DEFAULT               i * (X - X/N) / (N-1)          (N == 1: 0)
    OFFSET_CORNERS        (i + 0.5) * max(1, X-1) / N
    UNALIGN_CORNERS       (i + 0.5) * X / N - 0.5

clipped to [0, X-1]. Nearest-neighbour sampling (iOS17 `resize`) takes the grid point rounded to
the nearest index (half up): DEFAULT maps output i to round(i * (X - X/N) / (N-1)). The older
`upsample_nearest_neighbor` / `resize_nearest_neighbor` floor i * X/N instead (their definition).
"""

from __future__ import annotations

import math

import numpy as np

from .ops_common import Args, OpInfo, UnsupportedOpError, bval, f32, ilist, ival, register, sval

# --------------------------------------------------------------------------- sampling grids


def sampling_grid(length: float, n_out: int, mode: str) -> np.ndarray:
    """Unclipped source coordinates of `n_out` samples over an axis of `length` cells (X above)."""
    i = np.arange(n_out, dtype=np.float64)
    if mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS"):
        if n_out == 1:
            return np.full(1, 0.0 if mode == "STRICT_ALIGN_CORNERS" else (length - 1) / 2.0)
        return i * (length - 1) / (n_out - 1)
    if mode == "DEFAULT":
        return i * (length - length / n_out) / (n_out - 1) if n_out > 1 else np.zeros(1)
    if mode == "OFFSET_CORNERS":
        delta = max(1.0, length - 1) / n_out
        return 0.5 * delta + i * delta
    if mode == "UNALIGN_CORNERS":
        return (i + 0.5) * length / n_out - 0.5
    if mode == "ASYMMETRIC":  # upsample_bilinear(align_corners=False, half_pixel_centers=False)
        return i * length / n_out
    raise UnsupportedOpError("resize", f"sampling_mode={mode}")


def _grid(n_in: int, n_out: int, mode: str) -> np.ndarray:
    return np.clip(sampling_grid(n_in, n_out, mode), 0, n_in - 1)


def _lerp_axis(x: np.ndarray, axis: int, grid: np.ndarray) -> np.ndarray:
    lo = np.floor(grid).astype(np.int64)
    hi = np.minimum(lo + 1, x.shape[axis] - 1)
    frac = (grid - lo).astype(np.float32)
    shape = [1] * x.ndim
    shape[axis] = -1
    frac = frac.reshape(shape)
    return np.take(x, lo, axis=axis) * (1 - frac) + np.take(x, hi, axis=axis) * frac


def _nearest_axis(x: np.ndarray, axis: int, grid: np.ndarray) -> np.ndarray:
    idx = np.minimum(np.floor(grid + 0.5).astype(np.int64), x.shape[axis] - 1)
    return np.take(x, idx, axis=axis)


def _bilinear(x: np.ndarray, out_h: int, out_w: int, mode: str) -> np.ndarray:
    x = f32(x)
    y = _lerp_axis(x, x.ndim - 2, _grid(x.shape[-2], out_h, mode))
    return _lerp_axis(y, y.ndim - 1, _grid(x.shape[-1], out_w, mode))


def _nearest_floor(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """upsample/resize_nearest_neighbor: source index floor(i * in / out)."""
    x = np.asarray(x)
    h, w = x.shape[-2:]
    rows = np.minimum(np.floor(np.arange(out_h) * (h / out_h)).astype(np.int64), h - 1)
    cols = np.minimum(np.floor(np.arange(out_w) * (w / out_w)).astype(np.int64), w - 1)
    return np.take(np.take(x, rows, axis=-2), cols, axis=-1)


def _scaled_size(n: int, scale) -> int:
    return int(math.floor(n * float(np.asarray(scale).item())))


# --------------------------------------------------------------------------- upsample / resize


@register("upsample_nearest_neighbor", exact=True)
def _upsample_nearest(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    sh, sw = a.get("scale_factor_height", 1), a.get("scale_factor_width", 1)
    return _nearest_floor(x, _scaled_size(x.shape[-2], sh), _scaled_size(x.shape[-1], sw))


@register("resize_nearest_neighbor", exact=True)
def _resize_nearest(a: Args, info: OpInfo):
    return _nearest_floor(np.asarray(a["x"]), ival(a["target_size_height"]), ival(a["target_size_width"]))


@register("upsample_bilinear")
def _upsample_bilinear(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    align = bval(a.get("align_corners", True))
    half_pixel = bval(a["half_pixel_centers"]) if a.get("half_pixel_centers") is not None else not align
    mode = "STRICT_ALIGN_CORNERS" if align else ("UNALIGN_CORNERS" if half_pixel else "ASYMMETRIC")
    out_h = _scaled_size(x.shape[-2], a.get("scale_factor_height", 1))
    out_w = _scaled_size(x.shape[-1], a.get("scale_factor_width", 1))
    return _bilinear(x, out_h, out_w, mode)


@register("resize_bilinear")
def _resize_bilinear(a: Args, info: OpInfo):
    return _bilinear(
        np.asarray(a["x"]),
        ival(a.get("target_size_height", 1)),
        ival(a.get("target_size_width", 1)),
        sval(a.get("sampling_mode", "DEFAULT")),
    )


@register("resize")
def _resize(a: Args, info: OpInfo):
    """iOS17 resize: the last `resized_dims` dims of x take their size from the end of `shape`
    (0 keeps x's size), each resampled on its own axis with the sampling mode's grid."""
    x = np.asarray(a["x"])
    shape = ilist(a["shape"])
    n = ival(a["resized_dims"])
    mode = sval(a.get("sampling_mode", "DEFAULT"))
    nearest = sval(a.get("interpolation_mode", "LINEAR")) == "NEAREST_NEIGHBOR"
    y = x if nearest else f32(x)
    for i in range(n):
        axis = x.ndim - n + i
        size = shape[len(shape) - n + i] or x.shape[axis]
        grid = _grid(x.shape[axis], size, mode)
        y = _nearest_axis(y, axis, grid) if nearest else _lerp_axis(y, axis, grid)
    return y


# --------------------------------------------------------------------------- point sampling


def _pad_index(idx: np.ndarray, n: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Map integer indices into [0, n) per padding mode; also return which were inside the image."""
    inside = (idx >= 0) & (idx < n)
    if mode == "constant":
        return np.clip(idx, 0, n - 1), inside
    if mode == "border":
        return np.clip(idx, 0, n - 1), np.ones_like(inside)
    if mode == "reflection":  # |1, 2, 3| -> |2, 3, 2, 1, 2, 3, 2, 1, 2|
        if n == 1:
            return np.zeros_like(idx), np.ones_like(inside)
        m = np.mod(idx, 2 * (n - 1))
        return np.where(m < n, m, 2 * (n - 1) - m), np.ones_like(inside)
    if mode == "symmetric":  # |1, 2, 3| -> |3, 2, 1, 1, 2, 3, 3, 2, 1|
        m = np.mod(idx, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m), np.ones_like(inside)
    raise UnsupportedOpError("resample", f"padding_mode={mode}")


def sample_points(
    x: np.ndarray, px: np.ndarray, py: np.ndarray, bilinear: bool, padding: str, pad_value: float
) -> np.ndarray:
    """Sample x [B, C, H, W] at pixel coordinates px, py [B, H2, W2] -> [B, C, H2, W2].

    Bilinear reads the four neighbours of each point, nearest the point rounded half up; a neighbour
    outside the image comes from the padding rule (`pad_value` for "constant").
    """
    x = f32(x)
    b_idx = np.arange(x.shape[0])[:, None, None]
    h, w = x.shape[-2:]

    def read(iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        ry, in_y = _pad_index(iy, h, padding)
        rx, in_x = _pad_index(ix, w, padding)
        vals = x[b_idx, :, ry, rx]  # [B, H2, W2, C]
        return np.where((in_y & in_x)[..., None], vals, np.float32(pad_value))

    if not bilinear:
        out = read(np.floor(py + 0.5).astype(np.int64), np.floor(px + 0.5).astype(np.int64))
    else:
        y0, x0 = np.floor(py), np.floor(px)
        fy, fx = (py - y0)[..., None].astype(np.float32), (px - x0)[..., None].astype(np.float32)
        y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
        top = read(y0, x0) * (1 - fx) + read(y0, x0 + 1) * fx
        bottom = read(y0 + 1, x0) * (1 - fx) + read(y0 + 1, x0 + 1) * fx
        out = top * (1 - fy) + bottom * fy
    return np.moveaxis(out, -1, 1)


def _to_pixels(c: np.ndarray, size: int, mode: str, align_corners: bool) -> np.ndarray:
    """Coordinates in `coordinates_mode` units -> pixel index units."""
    if mode == "unnormalized":
        return c
    if mode == "normalized_minus_one_to_one":
        return (c + 1) / 2 * (size - 1) if align_corners else ((c + 1) * size - 1) / 2
    if mode == "normalized_zero_to_one":
        return c * (size - 1) if align_corners else c * size - 0.5
    raise UnsupportedOpError("resample", f"coordinates_mode={mode}")


@register("resample")
def _resample(a: Args, info: OpInfo):
    x = f32(a["x"])
    coords = np.asarray(a["coordinates"], dtype=np.float64)
    mode = sval(a.get("coordinates_mode", "normalized_minus_one_to_one"))
    align = bval(a.get("align_corners", False))
    px = _to_pixels(coords[..., 0], x.shape[-1], mode, align)
    py = _to_pixels(coords[..., 1], x.shape[-2], mode, align)
    sampling = sval(a.get("sampling_mode", "bilinear")).lower()
    if sampling not in ("bilinear", "nearest"):
        raise UnsupportedOpError("resample", f"sampling_mode={sampling}")
    padding = sval(a.get("padding_mode", "constant")).lower()
    return sample_points(x, px, py, sampling == "bilinear", padding, float(np.asarray(a.get("padding_value", 0.0))))


@register("affine")
def _affine(a: Args, info: OpInfo):
    """Output pixel (x, y) in [-1, 1] coordinates (align_corners, the only mode the op allows)
    reads the input at (a0 x + a1 y + a2, b0 x + b1 y + b2), bilinear, zero padding."""
    x = f32(a["x"])
    out_h, out_w = ival(a["output_height"]), ival(a["output_width"])
    m = np.asarray(a["transform_matrix"], dtype=np.float64).reshape(-1, 6)
    m = np.broadcast_to(m, (x.shape[0], 6))
    gy = np.linspace(-1.0, 1.0, out_h) if out_h > 1 else np.zeros(1)
    gx = np.linspace(-1.0, 1.0, out_w) if out_w > 1 else np.zeros(1)
    yy, xx = np.meshgrid(gy, gx, indexing="ij")
    sx = m[:, 0, None, None] * xx + m[:, 1, None, None] * yy + m[:, 2, None, None]
    sy = m[:, 3, None, None] * xx + m[:, 4, None, None] * yy + m[:, 5, None, None]
    px = _to_pixels(sx, x.shape[-1], "normalized_minus_one_to_one", True)
    py = _to_pixels(sy, x.shape[-2], "normalized_minus_one_to_one", True)
    return sample_points(x, px, py, True, "constant", float(np.asarray(a.get("padding_value", 0.0))))


# --------------------------------------------------------------------------- crop_resize


def _boxes_corners(boxes: np.ndarray, mode: str) -> np.ndarray:
    """[N, 4] boxes in `box_coordinate_mode` -> [N, 4] as (y1, x1, y2, x2)."""
    b = boxes.astype(np.float64)
    if mode == "CORNERS_HEIGHT_FIRST":
        return b
    if mode == "CORNERS_WIDTH_FIRST":
        return b[:, [1, 0, 3, 2]]
    if mode in ("CENTER_SIZE_HEIGHT_FIRST", "CENTER_SIZE_WIDTH_FIRST"):
        if mode == "CENTER_SIZE_WIDTH_FIRST":
            b = b[:, [1, 0, 3, 2]]
        cy, cx, bh, bw = b.T
        return np.stack([cy - bh / 2, cx - bw / 2, cy + bh / 2, cx + bw / 2], axis=1)
    raise UnsupportedOpError("crop_resize", f"box_coordinate_mode={mode}")


def _box_grid(start: np.ndarray, end: np.ndarray, n_out: int, mode: str) -> np.ndarray:
    """[N, n_out] sample coordinates over each box's [start, end] (sampling modes on that interval)."""
    length = end - start + 1  # an interval [0, X-1] has X cells
    rows = [start[k] + sampling_grid(float(length[k]), n_out, mode) for k in range(len(start))]
    return np.stack(rows) if rows else np.zeros((0, n_out))


@register("crop_resize")
def _crop_resize(a: Args, info: OpInfo):
    """Bilinear crops of x [B, C, H, W]: iOS15/16 take `roi` [N, 1, 4|5, 1, 1] (output
    [N, B|1, C, h, w]), iOS17 takes `boxes` [N, 4] and `box_indices` (output [N, C, h, w]).
    Samples outside the image read `pad_value` (0 before iOS16)."""
    x = f32(a["x"])
    b, _, h, w = x.shape
    if a.get("roi") is not None:
        roi = np.asarray(a["roi"], dtype=np.float64).reshape(np.shape(a["roi"])[0], -1)
        if roi.shape[1] == 5:
            indices, boxes = roi[:, 0].astype(np.int64), roi[:, 1:]
        else:
            indices, boxes = None, roi
    else:
        boxes = np.asarray(a["boxes"], dtype=np.float64).reshape(-1, 4)
        given = a.get("box_indices")
        indices = np.arange(len(boxes)) if given is None else np.asarray(given).astype(np.int64).reshape(-1)
    box_mode = sval(a.get("box_coordinate_mode", "CORNERS_HEIGHT_FIRST"))
    boxes = _boxes_corners(boxes * float(np.asarray(a.get("spatial_scale", 1.0))), box_mode)
    if bval(a.get("normalized_coordinates", False)):
        boxes = boxes * np.array([h - 1, w - 1, h - 1, w - 1], dtype=np.float64)
    th, tw = ival(a.get("target_height", 1)), ival(a.get("target_width", 1))
    mode = sval(a.get("sampling_mode", "DEFAULT"))
    gy = _box_grid(boxes[:, 0], boxes[:, 2], th, mode)  # [N, th]
    gx = _box_grid(boxes[:, 1], boxes[:, 3], tw, mode)  # [N, tw]
    pad = float(np.asarray(a.get("pad_value", 0.0)))
    py = np.broadcast_to(gy[:, :, None], (len(boxes), th, tw))
    px = np.broadcast_to(gx[:, None, :], (len(boxes), th, tw))
    inside = (py >= 0) & (py <= h - 1) & (px >= 0) & (px <= w - 1)
    py, px = np.clip(py, 0, h - 1), np.clip(px, 0, w - 1)

    def crops(images: np.ndarray) -> np.ndarray:  # images [N, C, H, W] -> [N, C, th, tw]
        out = sample_points(images, px, py, True, "border", 0.0)
        return np.where(inside[:, None], out, np.float32(pad))

    if indices is not None:
        result = crops(x[indices])
        return result if a.get("roi") is None else result[:, None]
    return np.stack([crops(np.broadcast_to(x[i], (len(boxes), *x.shape[1:]))) for i in range(b)], axis=1)
