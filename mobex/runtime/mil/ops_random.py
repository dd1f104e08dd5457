"""Random MIL ops: `random_bernoulli`, `random_categorical`, `random_normal`, `random_uniform`
(coremltools' `ops/defs/iOS15/random.py`).

Core ML's generator is not specified, so no interpreter can reproduce its numbers; what the spec
fixes is the distribution, the shape, and that a given `seed` reproduces the same values on every
invocation. Here a `seed` other than -1 seeds a fresh numpy PCG64 generator per call (the same
output on every run); seed -1 draws from an unseeded generator. Degenerate parameters
(probability 0 or 1, stddev 0, low == high) are therefore exact, and everything else can only be
checked as a distribution (mean, variance, range), which is how this module is tested. The ops are
never folded at load, so an unseeded op draws anew on every `run`.
"""

from __future__ import annotations

import numpy as np

from .ops_common import Args, OpInfo, UnsupportedOpError, f32, ilist, ival, register, sval


def _rng(a: Args) -> np.random.Generator:
    seed = ival(a.get("seed", -1))
    return np.random.default_rng(None if seed == -1 else seed)


def _shape(a: Args) -> list[int]:
    return ilist(a["shape"])


@register("random_bernoulli", foldable=False)
def _random_bernoulli(a: Args, info: OpInfo):
    prob = float(np.asarray(a.get("prob", 0.5)))
    return (_rng(a).random(_shape(a)) < prob).astype(np.float32)


@register("random_normal", foldable=False)
def _random_normal(a: Args, info: OpInfo):
    mean, std = float(np.asarray(a.get("mean", 0.0))), float(np.asarray(a.get("stddev", 1.0)))
    return (mean + std * _rng(a).standard_normal(_shape(a))).astype(np.float32)


@register("random_uniform", foldable=False)
def _random_uniform(a: Args, info: OpInfo):
    low, high = float(np.asarray(a.get("low", 0.0))), float(np.asarray(a.get("high", 1.0)))
    return (low + (high - low) * _rng(a).random(_shape(a))).astype(np.float32)


@register("random_categorical", foldable=False)
def _random_categorical(a: Args, info: OpInfo):
    """`size` draws (with replacement) per distribution along the last axis; outputs class indices
    as floats (the op's dtype is that of x)."""
    x = f32(a["x"]).astype(np.float64)
    mode = sval(a.get("mode", "logits"))
    if mode == "probs":
        with np.errstate(divide="ignore"):
            x = np.log(x)
    elif mode != "logits":
        raise UnsupportedOpError("random_categorical", f"mode={mode}")
    size = ival(a.get("size", 1))
    flat = x.reshape(-1, x.shape[-1])
    p = np.exp(flat - flat.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    rng = _rng(a)
    cdf = np.cumsum(p, axis=-1)
    draws = rng.random((flat.shape[0], size))
    idx = np.stack([np.searchsorted(cdf[r], draws[r], side="right") for r in range(flat.shape[0])])
    idx = np.minimum(idx, flat.shape[-1] - 1)
    return idx.reshape(x.shape[:-1] + (size,)).astype(np.float32)
