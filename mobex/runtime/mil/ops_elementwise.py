"""Elementwise MIL ops: unary math, binary arithmetic and comparison, activations, cast, select.

Semantics follow coremltools' op definitions (`ops/defs/iOS15/elementwise_*.py`, `activation.py`,
and their iOS17 variants), including the epsilons that `log`, `rsqrt` and `inverse` add.
"""

from __future__ import annotations

import math

import numpy as np

from .ops_common import CONTAINER_DTYPES, Args, OpInfo, UnsupportedOpError, f32, register, sval, to_torch

# --------------------------------------------------------------------------- binary


def _binary(fn):
    def kernel(a: Args, info: OpInfo):
        return fn(np.asarray(a["x"]), np.asarray(a["y"]))

    return kernel


def _true_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(x, y)


def _floor_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.floor_divide(x, y)


def _mod(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.mod(x, y)


def _pow(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.power(x, y)


_BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "real_div": _true_div,
    "floor_div": _floor_div,
    "mod": _mod,
    "pow": _pow,
}
_EXACT_BINARY = {
    "maximum": np.maximum,
    "minimum": np.minimum,
    "equal": np.equal,
    "not_equal": np.not_equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "logical_and": np.logical_and,
    "logical_or": np.logical_or,
    "logical_xor": np.logical_xor,
}
for _name, _fn in _BINARY.items():
    register(_name)(_binary(_fn))
for _name, _fn in _EXACT_BINARY.items():
    register(_name, exact=True)(_binary(_fn))

# --------------------------------------------------------------------------- unary


def _unary(fn):
    def kernel(a: Args, info: OpInfo):
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            return fn(np.asarray(a["x"]))

    return kernel


def _erf(x: np.ndarray) -> np.ndarray:
    import torch

    return torch.special.erf(to_torch(f32(x))).numpy()


_UNARY = {
    "acos": np.arccos,
    "asin": np.arcsin,
    "atan": np.arctan,
    "atanh": np.arctanh,
    "cos": np.cos,
    "cosh": np.cosh,
    "erf": _erf,
    "exp": np.exp,
    "exp2": np.exp2,
    "sin": np.sin,
    "sinh": np.sinh,
    "sqrt": np.sqrt,
    "square": np.square,
    "tan": np.tan,
    "tanh": np.tanh,
}
_EXACT_UNARY = {
    "abs": np.abs,
    "ceil": np.ceil,
    "floor": np.floor,
    "round": np.round,  # half to even, as coremltools' value_inference (np.round)
    "sign": np.sign,
    "logical_not": np.logical_not,
    "relu": lambda x: np.maximum(x, 0).astype(x.dtype, copy=False),
    "relu6": lambda x: np.clip(x, 0, 6).astype(x.dtype, copy=False),
}
for _name, _fn in _UNARY.items():
    register(_name)(_unary(_fn))
for _name, _fn in _EXACT_UNARY.items():
    register(_name, exact=True)(_unary(_fn))


@register("log")
def _log(a: Args, info: OpInfo):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(f32(a["x"]) + f32(a.get("epsilon", 1e-45)))


@register("rsqrt")
def _rsqrt(a: Args, info: OpInfo):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / np.sqrt(f32(a["x"]) + f32(a.get("epsilon", 1e-12)))


@register("inverse")
def _inverse(a: Args, info: OpInfo):
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1.0 / (f32(a["x"]) + f32(a.get("epsilon", 1e-4)))


@register("threshold", exact=True)
def _threshold(a: Args, info: OpInfo):
    return np.maximum(a["x"], a["alpha"])


@register("clip", exact=True)
def _clip(a: Args, info: OpInfo):
    return np.minimum(np.maximum(a["x"], a["alpha"]), a["beta"])


@register("cast")
def _cast(a: Args, info: OpInfo):
    dtype = sval(a["dtype"])
    if dtype not in CONTAINER_DTYPES:
        raise UnsupportedOpError("cast", f"dtype={dtype}")
    x = np.asarray(a["x"])
    if dtype == "bool":
        return x != 0
    target = CONTAINER_DTYPES[dtype]
    if np.issubdtype(target, np.integer) and np.issubdtype(x.dtype, np.floating):
        with np.errstate(invalid="ignore"):
            return np.trunc(x).astype(target)
    return x.astype(target)


@register("select", exact=True)
def _select(a: Args, info: OpInfo):
    return np.where(np.asarray(a["cond"]).astype(bool), a["a"], a["b"])


# --------------------------------------------------------------------------- activations


def _torch_act(name: str):
    def kernel(a: Args, info: OpInfo):
        import torch

        return getattr(torch, name)(to_torch(f32(a["x"]))).numpy()

    return kernel


register("sigmoid")(_torch_act("sigmoid"))


@register("silu")
def _silu(a: Args, info: OpInfo):
    import torch.nn.functional as F

    return F.silu(to_torch(f32(a["x"]))).numpy()


@register("softplus")
def _softplus(a: Args, info: OpInfo):
    x = f32(a["x"])
    return np.log1p(np.exp(-np.abs(x))) + np.maximum(x, 0)


@register("softsign")
def _softsign(a: Args, info: OpInfo):
    x = f32(a["x"])
    return x / (1 + np.abs(x))


@register("sigmoid_hard")
def _sigmoid_hard(a: Args, info: OpInfo):
    return np.clip(f32(a["alpha"]) * f32(a["x"]) + f32(a["beta"]), 0, 1)


@register("leaky_relu")
def _leaky_relu(a: Args, info: OpInfo):
    x = f32(a["x"])
    return np.where(x < 0, x * f32(a["alpha"]), x)


@register("elu")
def _elu(a: Args, info: OpInfo):
    x = f32(a["x"])
    with np.errstate(over="ignore"):
        return np.where(x < 0, f32(a["alpha"]) * np.expm1(np.minimum(x, 0)), x)


def _channel_param(p: np.ndarray, rank: int) -> np.ndarray:
    """A per-channel vector broadcast along axis 1 of a rank-`rank` tensor (prelu, softplus_parametric)."""
    p = f32(p).reshape(-1)
    return p.reshape((1, -1) + (1,) * (rank - 2)) if rank >= 2 else p


@register("prelu")
def _prelu(a: Args, info: OpInfo):
    x = f32(a["x"])
    alpha = _channel_param(a["alpha"], x.ndim)
    return np.maximum(x, 0) + np.minimum(x, 0) * alpha


@register("softplus_parametric")
def _softplus_parametric(a: Args, info: OpInfo):
    x = f32(a["x"])
    alpha = _channel_param(a["alpha"], x.ndim)
    beta = _channel_param(a["beta"], x.ndim)
    z = x * beta
    return alpha * (np.log1p(np.exp(-np.abs(z))) + np.maximum(z, 0))


@register("clamped_relu")
def _clamped_relu(a: Args, info: OpInfo):
    x = f32(a["x"])
    alpha, beta = f32(a["alpha"]), f32(a["beta"])
    return np.minimum(np.maximum(x, 0), beta) + np.minimum(np.minimum(x, 0) * alpha, beta)


@register("linear_activation")
def _linear_activation(a: Args, info: OpInfo):
    return f32(a["alpha"]) * f32(a["x"]) + f32(a["beta"])


@register("scaled_tanh")
def _scaled_tanh(a: Args, info: OpInfo):
    return f32(a["alpha"]) * np.tanh(f32(a["x"]) * f32(a["beta"]))


@register("thresholded_relu", exact=True)
def _thresholded_relu(a: Args, info: OpInfo):
    x = np.asarray(a["x"])
    return np.where(x < a["alpha"], np.zeros((), x.dtype), x)


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


@register("gelu")
def _gelu(a: Args, info: OpInfo):
    import torch

    mode = sval(a.get("mode", "EXACT"))
    x = to_torch(f32(a["x"]))
    if mode == "EXACT":
        return torch.nn.functional.gelu(x).numpy()
    if mode == "TANH_APPROXIMATION":
        return (0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x**3)))).numpy()
    if mode == "SIGMOID_APPROXIMATION":
        return (x * torch.sigmoid(1.702 * x)).numpy()
    raise UnsupportedOpError("gelu", f"mode={mode}")
