"""Data-movement MIL ops: reshape, transpose, concat/split/stack, slicing, gather/scatter, pad, tile,
fill, shape, range, cumsum, topk, and the space/depth shuffles.

Semantics follow coremltools' `ops/defs/iOS15/tensor_*.py`, `scatter_gather.py` and their iOS16/17/18
variants. These ops never create new float values (except cumsum and scatter with add-like modes), so
most are registered `exact`: their fp16 outputs need no rounding.
"""

from __future__ import annotations

import numpy as np

from .ops_common import (
    Args,
    OpInfo,
    UnsupportedOpError,
    bval,
    ilist,
    ival,
    norm_axis,
    register,
    sval,
)


@register("identity", exact=True)
def _identity(a: Args, info: OpInfo):
    return a["x"]


@register("reshape", exact=True)
def _reshape(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    shape = ilist(a["shape"])
    # iOS17: each 0 copies the dim of x at the same position counted from the right (1 when out of
    # range); for iOS15/16, where 0 requires len(shape) == rank, that is the same rule.
    offset = x.ndim - len(shape)
    shape = [(x.shape[i + offset] if 0 <= i + offset < x.ndim else 1) if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


@register("reshape_like", exact=True)
def _reshape_like(a: Args, info: OpInfo):
    shape: list[int] = []
    for ref, begin, end, end_mask in zip(a["ref_tensors"], a["begins"], a["ends"], a["end_masks"], strict=True):
        dims = np.shape(ref)
        stop = len(dims) if bval(end_mask) else ival(end)
        shape.extend(dims[ival(begin) : stop])
    return np.asarray(a["x"]).reshape(shape)


@register("transpose", exact=True)
def _transpose(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    return np.transpose(x, [norm_axis(p, x.ndim) for p in ilist(a["perm"])])


@register("squeeze", exact=True)
def _squeeze(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axes = a.get("axes")
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(norm_axis(ax, x.ndim) for ax in ilist(axes)))


@register("expand_dims", exact=True)
def _expand_dims(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axes = ilist(a["axes"])
    out_rank = x.ndim + len(axes)
    shape = list(x.shape)
    for ax in sorted(norm_axis(ax, out_rank) for ax in axes):
        shape.insert(ax, 1)
    return x.reshape(shape)


@register("flatten2d", exact=True)
def _flatten2d(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a.get("axis", 1)), x.ndim)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


@register("concat", exact=True)
def _concat(a: Args, info: OpInfo):
    values = [np.asarray(v) for v in a["values"]]
    axis = ival(a["axis"])
    if a.get("interleave") is not None and bval(a["interleave"]):
        # interleave: take one slice of each input in turn along `axis`.
        axis = norm_axis(axis, values[0].ndim)
        stacked = np.stack(values, axis=axis + 1)
        shape = list(values[0].shape)
        shape[axis] = -1
        return stacked.reshape(shape)
    if values[0].ndim == 0:
        return np.stack(values)
    return np.concatenate(values, axis=axis)


@register("stack", exact=True)
def _stack(a: Args, info: OpInfo):
    return np.stack([np.asarray(v) for v in a["values"]], axis=ival(a["axis"]))


@register("split", exact=True)
def _split(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a["axis"]), x.ndim)
    if a.get("split_sizes") is not None:
        sizes = ilist(a["split_sizes"])
    else:
        n = ival(a["num_splits"])
        step = -(-x.shape[axis] // n)  # last chunk may be smaller, as coremltools infers
        sizes = [min(step, x.shape[axis] - i * step) for i in range(n)]
    cuts = np.cumsum(sizes)[:-1]
    return tuple(np.split(x, cuts, axis=axis))


def _slices_by_index(x: np.ndarray, a: Args) -> tuple[tuple[slice | int, ...], list[int]]:
    rank = x.ndim
    begin, end = ilist(a["begin"]), ilist(a["end"])
    stride = ilist(a["stride"]) if a.get("stride") is not None else [1] * rank
    begin_mask = (
        [bool(m) for m in np.asarray(a["begin_mask"]).reshape(-1)]
        if a.get("begin_mask") is not None
        else [False] * rank
    )
    end_mask = (
        [bool(m) for m in np.asarray(a["end_mask"]).reshape(-1)] if a.get("end_mask") is not None else [False] * rank
    )
    squeeze = (
        [bool(m) for m in np.asarray(a["squeeze_mask"]).reshape(-1)]
        if a.get("squeeze_mask") is not None
        else [False] * rank
    )
    slices: list[slice | int] = []
    for i in range(rank):
        if squeeze[i]:
            slices.append(norm_axis(begin[i], x.shape[i]))
            continue
        slices.append(slice(None if begin_mask[i] else begin[i], None if end_mask[i] else end[i], stride[i]))
    return tuple(slices), [i for i in range(rank) if squeeze[i]]


@register("slice_by_index", exact=True)
def _slice_by_index(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    slices, _ = _slices_by_index(x, a)
    return x[slices]


@register("slice_update", exact=True)
def _slice_update(a: Args, info: OpInfo):
    x = np.array(a["x"], copy=True)
    slices, _ = _slices_by_index(x, a)
    x[slices] = np.reshape(a["update"], x[slices].shape)
    return x


@register("slice_by_size", exact=True)
def _slice_by_size(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    begin, size = ilist(a["begin"]), ilist(a["size"])
    slices = []
    for i in range(x.ndim):
        b = norm_axis(begin[i], x.shape[i])
        slices.append(slice(b, b + size[i]) if size[i] >= 0 else slice(b, None))
    return x[tuple(slices)]


IOS17 = 8  # spec version of the iOS17 opset: indices must be non-negative, validate_indices added


def _indices(a: Args, info: OpInfo, idx, dims) -> tuple[np.ndarray, np.ndarray | None]:
    """Indices into axes of sizes `dims` (the last axis of idx when several), and which are in bounds.

    Before iOS17 a negative index counts from the end. From iOS17 only 0 <= i < dim is valid: with
    `validate_indices` anything else is a runtime error (Core ML fails the prediction); without,
    the op's result is "undefined but memory safe", and here an out-of-bound index reads 0 (gathers)
    or its update is dropped (scatters). Returns (indices, mask of valid ones or None when all are).
    """
    idx = np.asarray(idx).astype(np.int64)
    dims_arr = np.asarray(dims, dtype=np.int64)
    if info.opset < IOS17:
        return np.where(idx < 0, idx + dims_arr, idx), None
    bad = (idx < 0) | (idx >= dims_arr)
    if np.ndim(dims):  # gather_nd / scatter_nd: one index tuple per position
        bad = bad.any(axis=-1)
    if not bad.any():
        return idx, None
    if bval(a.get("validate_indices", False)):
        raise IndexError(f"{info.op_type}: indices out of bounds (valid: 0 <= index < {dims})")
    return np.where(np.expand_dims(bad, -1) if np.ndim(dims) else bad, 0, idx), ~bad


def _zero_invalid(res: np.ndarray, valid: np.ndarray | None, lead: int, trail: int) -> np.ndarray:
    """Zero the gathered positions of invalid indices; `valid` sits after `lead` dims of res."""
    if valid is None:
        return res
    mask = valid.reshape((1,) * lead + valid.shape + (1,) * trail)
    return np.where(mask, res, np.zeros((), res.dtype))


@register("gather", exact=True)
def _gather(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a.get("axis", 0)), x.ndim)
    batch_dims = ival(a.get("batch_dims", 0))
    idx, valid = _indices(a, info, a["indices"], x.shape[axis])
    if batch_dims == 0:
        return _zero_invalid(np.take(x, idx, axis=axis), valid, axis, x.ndim - axis - 1)
    # batch_dims > 0: gather independently per leading batch index (coremltools `compute_gather`).
    bshape = x.shape[:batch_dims]
    xb = x.reshape((-1,) + x.shape[batch_dims:])
    ib = idx.reshape((-1,) + idx.shape[batch_dims:])
    res = np.stack([np.take(p, i, axis=axis - batch_dims) for p, i in zip(xb, ib, strict=True)])
    res = res.reshape(bshape + res.shape[1:])
    if valid is not None:  # valid is [*B, *I]: align it after the batch dims and the axes before `axis`
        inner = valid.reshape(bshape + (1,) * (axis - batch_dims) + valid.shape[batch_dims:])
        res = np.where(inner.reshape(inner.shape + (1,) * (res.ndim - inner.ndim)), res, np.zeros((), res.dtype))
    return res


@register("gather_along_axis", exact=True)
def _gather_along_axis(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a.get("axis", 0)), x.ndim)
    idx, valid = _indices(a, info, a["indices"], x.shape[axis])
    return _zero_invalid(np.take_along_axis(x, idx, axis=axis), valid, 0, 0)


@register("gather_nd", exact=True)
def _gather_nd(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    raw = np.asarray(a["indices"])
    batch_dims = ival(a.get("batch_dims", 0))
    idx, valid = _indices(a, info, raw, x.shape[batch_dims : batch_dims + raw.shape[-1]])
    if batch_dims:
        bshape = x.shape[:batch_dims]
        xb = x.reshape((-1,) + x.shape[batch_dims:])
        ib = idx.reshape((-1,) + idx.shape[batch_dims:])
        res = np.stack([p[tuple(np.moveaxis(i, -1, 0))] for p, i in zip(xb, ib, strict=True)])
        res = res.reshape(bshape + res.shape[1:])
    else:
        res = x[tuple(np.moveaxis(idx, -1, 0))]
    return _zero_invalid(res, valid, 0, res.ndim - (0 if valid is None else valid.ndim))


_SCATTER_MODES = {
    "update": None,
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": np.divide,
    "max": np.maximum,
    "min": np.minimum,
}


def _scatter_apply(data: np.ndarray, index: tuple, updates: np.ndarray, mode: str) -> None:
    if mode not in _SCATTER_MODES:
        raise UnsupportedOpError("scatter", f"mode={mode}")
    fn = _SCATTER_MODES[mode]
    if fn is None:
        data[index] = updates
    else:
        fn.at(data, index, updates)


@register("scatter")
def _scatter(a: Args, info: OpInfo):
    data = np.array(a["data"], copy=True)
    axis = norm_axis(ival(a.get("axis", 0)), data.ndim)
    idx, valid = _indices(a, info, np.asarray(a["indices"]).reshape(-1), data.shape[axis])
    moved = np.moveaxis(data, axis, 0)  # a view: updates land in `data`
    updates = np.moveaxis(np.asarray(a["updates"]), axis, 0).reshape((len(idx),) + moved.shape[1:])
    if valid is not None:
        idx, updates = idx[valid], updates[valid]
    _scatter_apply(moved, (idx,), updates, sval(a.get("mode", "add")))
    return data


@register("scatter_along_axis")
def _scatter_along_axis(a: Args, info: OpInfo):
    data = np.array(a["data"], copy=True)
    axis = norm_axis(ival(a.get("axis", 0)), data.ndim)
    idx, valid = _indices(a, info, a["indices"], data.shape[axis])
    grids = [np.broadcast_to(g, idx.shape) for g in np.indices(idx.shape, sparse=True)]
    grids[axis] = idx
    updates = np.broadcast_to(np.asarray(a["updates"]), idx.shape)
    if valid is not None:
        grids, updates = [g[valid] for g in grids], updates[valid]
    _scatter_apply(data, tuple(grids), updates, sval(a.get("mode", "add")))
    return data


@register("scatter_nd")
def _scatter_nd(a: Args, info: OpInfo):
    data = np.array(a["data"], copy=True)
    raw = np.asarray(a["indices"])
    idx, valid = _indices(a, info, raw, data.shape[: raw.shape[-1]])
    updates = np.asarray(a["updates"])
    if valid is not None:
        idx, updates = idx[valid], updates[valid]
    _scatter_apply(data, tuple(np.moveaxis(idx, -1, 0)), updates, sval(a.get("mode", "add")))
    return data


@register("tile", exact=True)
def _tile(a: Args, info: OpInfo):
    return np.tile(np.asarray(a["x"]), ilist(a["reps"]))


@register("pad", exact=True)
def _pad(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    pads = ilist(a["pad"])
    pads = [0] * (2 * x.ndim - len(pads)) + pads  # pad applies to the last len(pad)/2 dims
    width = [(pads[2 * i], pads[2 * i + 1]) for i in range(x.ndim)]
    mode = sval(a.get("mode", "constant"))
    if mode == "constant":
        return np.pad(x, width, mode="constant", constant_values=np.asarray(a.get("constant_val", 0.0)).item())
    if mode in ("reflect", "replicate"):
        return np.pad(x, width, mode="edge" if mode == "replicate" else "reflect")
    raise UnsupportedOpError("pad", f"mode={mode}")


@register("fill", exact=True)
def _fill(a: Args, info: OpInfo):
    return np.full(ilist(a["shape"]), np.asarray(a.get("value", 0.0)).item())


@register("fill_like", exact=True)
def _fill_like(a: Args, info: OpInfo):
    return np.full(np.shape(a["ref_tensor"]), np.asarray(a.get("value", 0.0)).item())


@register("shape", exact=True)
def _shape(a: Args, info: OpInfo):
    return np.asarray(np.shape(a["x"]), dtype=np.int32)


@register("range_1d")
def _range_1d(a: Args, info: OpInfo):
    return np.arange(np.asarray(a["start"]).item(), np.asarray(a["end"]).item(), np.asarray(a["step"]).item())


@register("cumsum")
def _cumsum(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a.get("axis", 0)), x.ndim)
    reverse = bval(a.get("reverse", False))
    if reverse:
        x = np.flip(x, axis)
    out = np.cumsum(x, axis=axis, dtype=x.dtype)
    if bval(a.get("exclusive", False)):
        out = np.concatenate(
            [np.zeros_like(np.take(out, [0], axis=axis)), np.take(out, range(x.shape[axis] - 1), axis=axis)], axis=axis
        )
    return np.flip(out, axis) if reverse else out


@register("band_part", exact=True)
def _band_part(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    lower, upper = ival(a.get("lower", -1)), ival(a.get("upper", -1))
    m, n = x.shape[-2:]
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    keep = ((lower < 0) | (i - j <= lower)) & ((upper < 0) | (j - i <= upper))
    return np.where(keep, x, np.zeros((), x.dtype))


@register("reverse", exact=True)
def _reverse(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axes = range(x.ndim) if a.get("axes") is None else ilist(a["axes"])
    return np.flip(x, tuple(axes)).copy()


def _sort_indices(x: np.ndarray, axis: int, ascending: bool) -> np.ndarray:
    return np.argsort(x if ascending else -x, axis=axis, kind="stable")


@register("argsort", exact=True)
def _argsort(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    return _sort_indices(x, ival(a.get("axis", -1)), bval(a.get("ascending", False))).astype(np.int32)


@register("topk", exact=True)
def _topk(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a.get("axis", -1)), x.ndim)
    k = ival(a.get("k", 1))
    idx = np.take(_sort_indices(x, axis, bval(a.get("ascending", False))), range(k), axis=axis)
    values = np.take_along_axis(x, idx, axis=axis)
    if len(info.out_dtypes) == 1:  # iOS16 return_indices=False
        return values
    return values, idx.astype(np.int32)


@register("one_hot", exact=True)
def _one_hot(a: Args, info: OpInfo):
    idx = np.asarray(a["indices"]).astype(np.int64)
    size = ival(a["one_hot_vector_size"])
    axis = ival(a.get("axis", -1))
    on, off = np.asarray(a.get("on_value", 1)).item(), np.asarray(a.get("off_value", 0)).item()
    hot = idx[..., None] == np.arange(size)
    out = np.where(hot, on, off)
    return np.moveaxis(out, -1, norm_axis(axis, idx.ndim + 1))


@register("non_zero", exact=True)
def _non_zero(a: Args, info: OpInfo):
    return np.transpose(np.nonzero(np.asarray(a["x"]))).astype(np.int32)


@register("depth_to_space", exact=True)
def _depth_to_space(a: Args, info: OpInfo):
    # DCR order (TensorFlow's depth_to_space).
    x = np.asarray(a["x"])
    b = ival(a["block_size"])
    n, c, h, w = x.shape
    y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@register("space_to_depth", exact=True)
def _space_to_depth(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    b = ival(a["block_size"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


@register("pixel_shuffle", exact=True)
def _pixel_shuffle(a: Args, info: OpInfo):
    # CRD order (torch.nn.PixelShuffle).
    x = np.asarray(a["x"])
    r = ival(a["upscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c // (r * r), r, r, h, w).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r)


@register("pixel_unshuffle", exact=True)
def _pixel_unshuffle(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    r = ival(a["downscale_factor"])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // r, r, w // r, r).transpose(0, 1, 3, 5, 2, 4)
    return y.reshape(n, c * r * r, h // r, w // r)


@register("sliding_windows", exact=True)
def _sliding_windows(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    axis = norm_axis(ival(a["axis"]), x.ndim)
    size, stride = ival(a["size"]), ival(a.get("stride", 1))
    win = np.lib.stride_tricks.sliding_window_view(x, size, axis=axis)  # window dim appended last
    win = np.take(win, range(0, win.shape[axis], stride), axis=axis)
    return np.moveaxis(win, -1, axis + 1).copy()


@register("crop", exact=True)
def _crop(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    (top, bottom), (left, right) = ilist(a["crop_height"]), ilist(a["crop_width"])
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


@register("reverse_sequence", exact=True)
def _reverse_sequence(a: Args, info: OpInfo):
    """For each index b along batch_axis, reverse the first lengths[b] elements along seq_axis."""
    x = np.array(a["x"], copy=True)
    seq_axis = norm_axis(ival(a.get("seq_axis", 0)), x.ndim)
    batch_axis = norm_axis(ival(a.get("batch_axis", 0)), x.ndim)
    lengths = ilist(a["lengths"])
    moved = np.moveaxis(x, (batch_axis, seq_axis), (0, 1))  # a view: writes land in x
    for b, n in enumerate(lengths):
        moved[b, :n] = moved[b, :n][::-1].copy()
    return x


@register("space_to_batch", exact=True)
def _space_to_batch(a: Args, info: OpInfo):
    """Pad H, W, then move each block offset (bh, bw) into the batch: batch index (bh*Bw + bw)*N + n
    (TensorFlow's space_to_batch_nd, channel-first)."""
    x = np.asarray(a["x"])
    bh, bw = ilist(a["block_shape"])
    (pt, pb), (pl, pr) = np.asarray(a["paddings"]).astype(np.int64).reshape(2, 2).tolist()
    x = np.pad(x, [(0, 0), (0, 0), (pt, pb), (pl, pr)])
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // bh, bh, w // bw, bw).transpose(3, 5, 0, 1, 2, 4)
    return y.reshape(bh * bw * n, c, h // bh, w // bw)


@register("batch_to_space", exact=True)
def _batch_to_space(a: Args, info: OpInfo):
    """The inverse of space_to_batch, then crop H, W."""
    x = np.asarray(a["x"])
    bh, bw = ilist(a["block_shape"])
    (ct, cb), (cl, cr) = np.asarray(a["crops"]).astype(np.int64).reshape(2, 2).tolist()
    nb, c, h, w = x.shape
    n = nb // (bh * bw)
    y = x.reshape(bh, bw, n, c, h, w).transpose(2, 3, 4, 0, 5, 1).reshape(n, c, h * bh, w * bw)
    return y[:, :, ct : h * bh - cb, cl : w * bw - cr]


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU of one (y1, x1, y2, x2) box with each of `others`."""
    h = np.maximum(0.0, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
    w = np.maximum(0.0, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
    inter = h * w
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(inter > 0, inter / (area + areas - inter), 0.0)


def _greedy_nms(corners: np.ndarray, order: list[int], iou_threshold: float) -> list[int]:
    """Walk `order` (best first), keep a box unless it overlaps a kept one by more than the threshold."""
    kept: list[int] = []
    for i in order:
        if not kept or np.all(_iou(corners[i], corners[kept]) <= iou_threshold):
            kept.append(int(i))
    return kept


@register("non_maximum_suppression")
def _non_maximum_suppression(a: Args, info: OpInfo):
    """Boxes (x, y, w, h centre-size) ranked by their best class score; scores not above
    `score_threshold` are dropped, then greedy IoU suppression (per class when
    per_class_suppression), best first, up to `max_boxes`. When nothing survives, the best box is
    kept (coremltools' reference). Outputs are padded with zeros and index -1."""
    boxes = np.asarray(a["boxes"], dtype=np.float64)
    scores = np.asarray(a["scores"], dtype=np.float64)
    iou_t, score_t = float(np.asarray(a["iou_threshold"])), float(np.asarray(a["score_threshold"]))
    max_boxes = ival(a["max_boxes"])
    per_class = bval(a.get("per_class_suppression", False))
    n_batch, _, n_score = scores.shape
    out_boxes = np.zeros((n_batch, max_boxes, 4))
    out_scores = np.zeros((n_batch, max_boxes, n_score))
    out_idx = -np.ones((n_batch, max_boxes), dtype=np.int32)
    out_n = np.zeros(n_batch, dtype=np.int32)
    for b in range(n_batch):
        cx, cy, w, h = boxes[b].T
        corners = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=1)
        best = scores[b].max(axis=-1)
        order = [i for i in np.argsort(-best, kind="stable") if best[i] > score_t]
        classes = scores[b].argmax(axis=-1)
        groups = [[i for i in order if classes[i] == c] for c in dict.fromkeys(classes[order])]
        kept = {i for group in (groups if per_class else [order]) for i in _greedy_nms(corners, group, iou_t)}
        ids = [i for i in order if i in kept][:max_boxes] or [int(np.argmax(best))]
        out_boxes[b, : len(ids)] = boxes[b, ids]
        out_scores[b, : len(ids)] = scores[b, ids]
        out_idx[b, : len(ids)] = ids
        out_n[b] = len(ids)
    return out_boxes, out_scores, out_idx, out_n
