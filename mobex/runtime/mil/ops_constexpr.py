"""Compressed-weight (`constexpr_*`) ops and the iOS17 activation quantize/dequantize ops.

All `constexpr_*` inputs are constants, so the interpreter folds these once at load. The formulas
are those of coremltools' `ops/defs/iOS16/constexpr_ops.py` and `ops/defs/iOS18/compression.py`.
The milproto loader hands sub-byte tensors (uint1..uint6, int4) over already unpacked, one element
per byte, with their logical shape; the iOS16 ops carry explicitly bit-packed uint8 buffers.
"""

from __future__ import annotations

import numpy as np

from .ops_common import CONTAINER_DTYPES, Args, OpInfo, UnsupportedOpError, ilist, ival, norm_axis, register, sval


def _along_axis(param: np.ndarray, rank: int, axis: int) -> np.ndarray:
    """A scalar or vector parameter broadcast along `axis` of a rank-`rank` tensor."""
    p = np.asarray(param)
    if p.ndim == rank:
        return p
    if p.ndim == 0 or p.size == 1:
        return p.reshape((1,) * rank)
    shape = [1] * rank
    shape[norm_axis(axis, rank)] = -1
    return p.reshape(shape)


def unpack_bits(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """`count` unsigned `nbits`-wide values packed LSB-first into bytes (MIL's sub-byte layout)."""
    bits = np.unpackbits(np.asarray(packed, dtype=np.uint8).reshape(-1), bitorder="little")
    bits = bits[: count * nbits].reshape(count, nbits).astype(np.uint16)
    weights = (1 << np.arange(nbits, dtype=np.uint16))[None, :]
    return (bits * weights).sum(axis=1).astype(np.uint16)


@register("constexpr_affine_dequantize")
def _affine_dequantize(a: Args, info: OpInfo):
    q = np.asarray(a["quantized_data"])
    axis = ival(a["axis"])
    zp = _along_axis(np.asarray(a["zero_point"]).astype(np.float32), q.ndim, axis)
    scale = _along_axis(np.asarray(a["scale"], dtype=np.float32), q.ndim, axis)
    return (q.astype(np.float32) - zp) * scale


@register("constexpr_cast")
def _constexpr_cast(a: Args, info: OpInfo):
    dtype = sval(a["output_dtype"])
    if dtype not in CONTAINER_DTYPES:
        raise UnsupportedOpError("constexpr_cast", f"output_dtype={dtype}")
    return np.asarray(a["source_val"]).astype(CONTAINER_DTYPES[dtype])


def _lut_iOS16(a: Args) -> np.ndarray:
    lut = np.asarray(a["lut"]).reshape(-1)
    shape = ilist(a["shape"])
    nbits = int(np.log2(lut.size))
    idx = unpack_bits(a["indices"], nbits, int(np.prod(shape)))
    return lut[idx].reshape(shape)


def lut_to_dense(indices: np.ndarray, lut: np.ndarray, vector_axis: int | None) -> np.ndarray:
    """iOS18 grouped (and vector) palettization: `lut` is [*G, 2^nbits, VECTOR_SIZE]."""
    indices = np.asarray(indices).astype(np.int64)
    lut = np.asarray(lut)
    rank = indices.ndim
    vec = lut.shape[-1]
    # Which LUT each index uses: the group it falls in along every dim.
    group_of = [np.arange(indices.shape[d]) // (indices.shape[d] // lut.shape[d]) for d in range(rank)]
    grid = np.ix_(*group_of)
    out = lut[grid + (indices,)]  # [*indices.shape, VECTOR_SIZE]
    if vec == 1:
        return out[..., 0]
    axis = norm_axis(int(vector_axis), rank)
    out = np.moveaxis(out, -1, axis + 1)  # the vector's elements follow their index along vector_axis
    shape = list(indices.shape)
    shape[axis] *= vec
    return out.reshape(shape)


@register("constexpr_lut_to_dense")
def _lut_to_dense(a: Args, info: OpInfo):
    if a.get("shape") is not None:  # iOS16 form: packed uint8 indices + flat LUT + shape
        return _lut_iOS16(a)
    vector_axis = a.get("vector_axis")
    return lut_to_dense(a["indices"], a["lut"], None if vector_axis is None else ival(vector_axis))


def _sparse_iOS16(a: Args) -> np.ndarray:
    shape = ilist(a["shape"])
    size = int(np.prod(shape))
    mask = np.unpackbits(np.asarray(a["mask"], dtype=np.uint8).reshape(-1), bitorder="little")[:size]
    data = np.asarray(a["nonzero_data"])
    out = np.zeros(size, dtype=data.dtype)
    out[mask != 0] = data
    return out.reshape(shape)


def sparse_to_dense(nonzero_data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    data = np.asarray(nonzero_data)
    m = np.asarray(mask)
    out = np.zeros(m.shape, dtype=data.dtype)
    out[m != 0] = data
    return out


@register("constexpr_sparse_to_dense")
def _sparse_to_dense(a: Args, info: OpInfo):
    if a.get("shape") is not None:  # iOS16 form: packed uint8 mask + shape
        return _sparse_iOS16(a)
    return sparse_to_dense(a["nonzero_data"], a["mask"])


def blockwise_shift_scale(data: np.ndarray, scale: np.ndarray, offset: np.ndarray | None) -> np.ndarray:
    """iOS18: scale * (data - offset), with one scale per block; block = data.shape / scale.shape."""
    x = np.asarray(data).astype(np.float32)
    s = np.asarray(scale, dtype=np.float32)
    o = None if offset is None else np.asarray(offset).astype(np.float32)
    for axis, (dn, sn) in enumerate(zip(x.shape, s.shape, strict=True)):
        if sn != dn:
            s = np.repeat(s, dn // sn, axis=axis)
            if o is not None:
                o = np.repeat(o, dn // sn, axis=axis)
    return s * (x - o) if o is not None else s * x


@register("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(a: Args, info: OpInfo):
    return blockwise_shift_scale(a["data"], a["scale"], a.get("offset"))


@register("constexpr_lut_to_sparse")
def _lut_to_sparse(a: Args, info: OpInfo):
    mask = np.asarray(a["indices_mask"])
    indices = sparse_to_dense(a["indices_nonzero_data"], mask)
    vector_axis = a.get("vector_axis")
    dense = lut_to_dense(indices, a["lut"], None if vector_axis is None else ival(vector_axis))
    if vector_axis is not None and np.asarray(a["lut"]).shape[-1] > 1:
        mask = np.repeat(mask, np.asarray(a["lut"]).shape[-1], axis=ival(vector_axis))
    return mask, dense[mask != 0].reshape(-1)


@register("constexpr_sparse_blockwise_shift_scale")
def _sparse_blockwise_shift_scale(a: Args, info: OpInfo):
    mask = np.asarray(a["data_mask"])
    dense = blockwise_shift_scale(sparse_to_dense(a["nonzero_data"], mask), a["scale"], a.get("offset"))
    return mask, dense[mask != 0].reshape(-1)


# --------------------------------------------------------------------------- iOS17 activation quantization


@register("quantize")
def _quantize(a: Args, info: OpInfo):
    x = np.asarray(a["input"], dtype=np.float32)
    axis = ival(a["axis"]) if a.get("axis") is not None else 0
    scale = _along_axis(np.asarray(a["scale"], dtype=np.float32), x.ndim, axis)
    zp = a.get("zero_point")
    zp = 0.0 if zp is None else _along_axis(np.asarray(zp).astype(np.float32), x.ndim, axis)
    dtype = sval(a["output_dtype"])
    info_ = np.iinfo(CONTAINER_DTYPES[dtype])
    return np.clip(np.round(x / scale + zp), info_.min, info_.max).astype(CONTAINER_DTYPES[dtype])


@register("dequantize")
def _dequantize(a: Args, info: OpInfo):
    q = np.asarray(a["input"])
    axis = ival(a["axis"]) if a.get("axis") is not None else 0
    scale = _along_axis(np.asarray(a["scale"], dtype=np.float32), q.ndim, axis)
    zp = a.get("zero_point")
    zp = 0.0 if zp is None else _along_axis(np.asarray(zp).astype(np.float32), q.ndim, axis)
    return (q.astype(np.float32) - zp) * scale
