"""Compatibility shims that let coremltools 9.0 convert graphs produced by torch 2.13 (and numpy 2.4).

coremltools 9.0 was tested up to torch 2.7. Newer torch and numpy emit op spellings and values its
torch frontend does not handle. Each shim replaces or adds one converter function in coremltools'
own registry (`register_torch_op(override=True)`, or the registry's setter where that refuses the
name), is installed once per process by `install_shims()`, and names the upstream bug it covers.
A shim that actually rewrites something during a conversion is recorded, so the converter can say
in its notes which shims a model needed.

`uninstall_shims()` puts coremltools' own converters back; the tests use it to check that each shim
is still needed. When such a test fails after a coremltools upgrade, delete that shim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_installed = False
_fired: set[str] = set()
_stock: dict[str, Callable | None] = {}  # registry key -> coremltools' own converter (None: absent)
_stock_max_pool: Callable | None = None
_stock_split: Callable | None = None
_stock_prelu: Callable | None = None
_stock_upsample_nearest: Callable | None = None


@dataclass(frozen=True)
class Shim:
    """One group of registry overrides: the torch op kinds it handles and the bug it works around."""

    name: str
    torch_ops: tuple[str, ...]
    upstream: str


SHIMS: tuple[Shim, ...] = (
    Shim(
        "scalar-cast",
        ("int", "bool"),
        "apple/coremltools#2633 (fixed by PR #2632 after 9.0; more sites in #2755): with numpy >= 2.4, "
        "ops._cast calls int() on a 1-element array: 'TypeError: only 0-dimensional arrays can be "
        "converted to Python scalars'. torch.jit.trace graphs that turn a size into an int hit it.",
    ),
    Shim(
        "new_ones",
        ("new_ones",),
        "coremltools 9.0 has no aten::new_ones converter: 'Unsupported fx node new_ones, kind new_ones' "
        "(torch.export) / \"PyTorch convert function for op 'new_ones' not implemented\" (trace). "
        "transformers' padding masks call `x.new_ones((), dtype=torch.bool)`. Added upstream by "
        "apple/coremltools PR #2668 (after 9.0); also ultralytics/ultralytics#25616.",
    ),
    Shim(
        "bool-bitwise",
        ("__and__", "__or__", "__xor__", "bitwise_or", "bitwise_xor"),
        "torch.export names `a & b` aten.__and__.Tensor; 9.0's fx importer checks the raw kind "
        "'__and__' against the registry before stripping the dunders: 'Unsupported fx node and_1, "
        "kind __and__' (transformers' BERT/DistilBERT masks). 9.0 also has no bitwise_or/xor at all "
        "(bitwise_or added by apple/coremltools PR #2668, after 9.0).",
    ),
    Shim(
        "where-scalar",
        ("where.scalarother",),
        "torch.export keeps `torch.where(cond, x, 0.0)` as aten.where.ScalarOther, which 9.0 does not "
        "register (it has where.self and where.ScalarSelf only): 'Unsupported fx node where, kind "
        "where.scalarother'. No upstream issue found.",
    ),
    Shim(
        "max-pool-stride",
        ("max_pool1d", "max_pool2d", "max_pool3d"),
        "torch 2.13's torch.export leaves out max_pool's default `stride` argument; 9.0 requires it: "
        "'node max_pool2d (max_pool2d) got 2 input(s), expected minimum 3 inputs' (nn.MaxPool2d(2) / "
        "F.max_pool2d(x, 2)). No upstream issue found.",
    ),
    Shim(
        "recurrent-cells",
        ("lstm_cell", "gru_cell"),
        "coremltools 9.0 converts nn.LSTM/nn.GRU but not the cells: 'Unsupported fx node lstm_cell, kind "
        "lstm_cell' / 'gru_cell' (torch.export) for nn.LSTMCell / nn.GRUCell stepped in a loop (streaming "
        "models with explicit state). Converted here to linear + sigmoid/tanh MIL ops, so the state in and "
        "out stay ordinary tensors. No upstream issue found.",
    ),
    Shim(
        "unsafe-chunk",
        ("unsafe_chunk", "unsafe_split", "unsafe_split_with_sizes"),
        "\"PyTorch convert function for op 'unsafe_chunk' not implemented\" (torch.jit.trace of LSTMCell / "
        "GRUCell, whose TorchScript kernels split the gates with unsafe_chunk) and 'Unsupported fx node "
        "unsafe_split' (torch.export). They are chunk/split without the aliasing checks. No upstream issue found.",
    ),
    Shim(
        "prelu-rank",
        ("prelu",),
        "9.0's prelu converter passes rank-2/3 inputs (PReLU after nn.Linear or nn.Conv1d) to MIL prelu "
        "as rank 3, which refuses per-channel alpha: 'prelu op: rank 3 or rank 5 input is only supported "
        "when all the values of alpha are same'. Here the input is lifted to rank 4 ([B, C, L, 1]) instead. "
        "No upstream issue found.",
    ),
    Shim(
        "gelu-tanh",
        ("gelu",),
        "torch.export passes gelu's `approximate` as a keyword; 9.0's converter reads positional inputs only, "
        "so GELU(approximate='tanh') silently becomes the exact (erf) GELU: no error, outputs off by up to "
        "~1e-3 (found by the coverage zoo, gelu_tanh_regressor). No upstream issue found.",
    ),
    Shim(
        "nearest-exact",
        ("_upsample_nearest_exact2d", "upsample_nearest_exact2d"),
        "9.0 has no converter for interpolate(mode='nearest-exact'): 'Unsupported fx node "
        "_upsample_nearest_exact2d'. For integer scale factors it equals mode='nearest' (floor((i + 0.5) / s) "
        "= floor(i / s)), which 9.0 converts; other factors still fail. No upstream issue found.",
    ),
    Shim(
        "tensor-unfold",
        ("unfold",),
        "9.0 has no converter for Tensor.unfold(dim, size, step) (sliding windows, e.g. audio framing): "
        "'Unsupported fx node unfold' (torch.export) / \"convert function for op 'unfold' not implemented\" "
        "(trace); only nn.Unfold (im2col) is converted. Static shapes: one gather of the window indices.",
    ),
    Shim(
        "zeros-like-dtype",
        ("zeros_like", "empty_like"),
        "torch.export passes zeros_like's `dtype` as a keyword; 9.0's converter reads positional inputs only, "
        "so `torch.zeros_like(bool_mask, dtype=torch.float32)` stays bool: no error, wrong numbers. "
        "F._canonical_mask builds nn.MultiheadAttention's key-padding mask that way, so the -inf fill became "
        "True and scaled_dot_product_attention read the float mask as a bool keep-mask, attending only to the "
        "padding (found by the coverage zoo, text_torch_transformer: cosine 0.53). No upstream issue found.",
    ),
    Shim(
        "zeros-dtype",
        ("zeros", "empty", "empty.memory_format"),
        "The same for torch.zeros / torch.empty: 9.0 reads `dtype` positionally only, and torch.export passes it "
        "as a keyword, so `torch.zeros(n, n, dtype=torch.int64)` became fp32. BEiT's relative position index is "
        "built that way and then filled with ints: 'ValueError: In op, of type torch_tensor_assign, named "
        "select_scatter_6, the named input `updates` must have the same data type as the named input `x`. "
        "However, updates has dtype int32 whereas x has dtype fp32' (coverage zoo, hf_beit). No upstream issue found.",
    ),
    Shim(
        "scalar-slot-copy",
        ("_internal_op_tensor_inplace_copy",),
        "torch.jit.trace of `t[0, 0] = n` (n a traced scalar, e.g. derived from a size) gives the in-place copy a "
        "1-element "
        "[1] update for a 0-d slot, which 9.0 passes on unchanged: 'ValueError: The updates tensor should have "
        "shape []. Got (1,)' (BEiT's relative position index on the trace path). The update is reshaped to "
        "the slot when the element counts agree. No upstream issue found.",
    ),
)


def fired() -> set[str]:
    """Names of the shims that rewrote something since the last `reset_fired()`."""
    return set(_fired)


def reset_fired() -> None:
    _fired.clear()


def install_shims() -> tuple[Shim, ...]:
    """Register every shim with coremltools' torch op registry; safe to call many times."""
    global _installed
    if _installed:
        return SHIMS
    _register(_int, "int")
    _register(_bool, "bool")
    _register(new_ones)
    _register(bitwise_and, "and")
    _register(bitwise_or, "or")
    _register(bitwise_xor, "xor")
    _register(where_scalarother, "where.scalarother")
    _register(lstm_cell)
    _register(gru_cell)
    _register(unsafe_chunk)
    global _stock_split, _stock_prelu
    _stock_split = _stock_split or _registry().get_func("split")
    _register(unsafe_split, "unsafe_split_with_sizes")
    stock_prelu = _registry().get_func("prelu")
    if stock_prelu is not None and stock_prelu is not prelu:
        _stock_prelu = stock_prelu
    _register(prelu)
    _register(gelu)
    _register(unfold)
    _register(zeros_like, "empty_like")
    _register(zeros, "empty", "empty.memory_format")
    _register(_internal_op_tensor_inplace_copy)
    global _stock_upsample_nearest
    _stock_upsample_nearest = _stock_upsample_nearest or _registry().get_func("upsample_nearest2d")
    _register(_upsample_nearest_exact2d, "upsample_nearest_exact2d", "_upsample_nearest_exact2d.vec",
              "upsample_nearest_exact2d.vec")  # fmt: skip
    stock_max_pool = _registry().get_func("max_pool1d")
    if stock_max_pool is not None and stock_max_pool is not max_pool1d:
        global _stock_max_pool
        _stock_max_pool = stock_max_pool
        _register(max_pool1d, "max_pool2d", "max_pool3d")
    # register_torch_op refuses names ending in "_" (it takes them for in-place ops), so the dunder
    # kinds the fx importer looks up are set with the registry's own setter. The converter then finds
    # the same functions again under the sanitized names ("and", "or", "xor").
    for kind, func in (("__and__", bitwise_and), ("__or__", bitwise_or), ("__xor__", bitwise_xor)):
        _remember(kind)
        _registry().set_func_by_name(func, kind)
    _installed = True
    return SHIMS


def uninstall_shims() -> None:
    """Put coremltools' own converters back (for tests and for checking whether a shim is still needed)."""
    global _installed
    mapping = _registry().name_to_func_mapping
    for key, func in _stock.items():
        if func is None:
            mapping.pop(key, None)
        else:
            mapping[key] = func
    _stock.clear()
    _installed = False


def _registry() -> Any:
    from coremltools.converters.mil.frontend.torch.torch_op_registry import _TORCH_OPS_REGISTRY

    return _TORCH_OPS_REGISTRY


def _remember(key: str) -> None:
    _stock.setdefault(key, _registry().name_to_func_mapping.get(key))


def _register(func: Callable, *aliases: str) -> None:
    from coremltools.converters.mil.frontend.torch.torch_op_registry import register_torch_op

    for key in (func.__name__, *aliases):
        _remember(key)
    register_torch_op(func, torch_alias=list(aliases) or None, override=True)


# --- scalar-cast: apple/coremltools#2633 (numpy >= 2.4, 'only 0-dimensional arrays can be converted
# --- to Python scalars' in ops._cast). Same logic as 9.0's _cast, with the element taken by .item().


def _scalar_cast(context: Any, node: Any, pytype: type, dtype_name: str) -> None:
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    x = _get_inputs(context, node, expected=1)[0]
    if not (len(x.shape) == 0 or all(d == 1 for d in x.shape)):
        raise ValueError("input to cast must be either a scalar or a length 1 tensor")
    if x.can_be_folded_to_const():
        val = x.val
        if isinstance(val, np.ndarray) and val.ndim > 0:
            _fired.add("scalar-cast")  # the case stock 9.0 crashes on: int(np.array([n]))
            res = mb.const(val=pytype(val.reshape(()).item()), name=node.name)
        elif isinstance(val, pytype):
            res = x
        else:
            res = mb.const(val=pytype(val), name=node.name)
    elif len(x.shape) > 0:
        res = mb.cast(x=mb.squeeze(x=x, name=node.name + "_item"), dtype=dtype_name, name=node.name)
    else:
        res = mb.cast(x=x, dtype=dtype_name, name=node.name)
    context.add(res, node.name)


# coremltools keys converters by function __name__ plus aliases: these names replace the stock
# `_int` / `_bool` entries as well as the `int` / `bool` kinds the frontend looks up.
def _int(context: Any, node: Any) -> None:
    _scalar_cast(context, node, int, "int32")


def _bool(context: Any, node: Any) -> None:
    _scalar_cast(context, node, bool, "bool")


# --- new_ones: missing in coremltools 9.0 ('Unsupported fx node new_ones'); upstream PR #2668.


def new_ones(context: Any, node: Any) -> None:
    """aten::new_ones(self, size, dtype=None, ...): ones of `size`, dtype from the argument or `self`."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING
    from coremltools.converters.mil.mil import types

    _fired.add("new_ones")
    inputs = _get_inputs(context, node, min_expected=2)
    ref, size = inputs[0], inputs[1]
    dtype = inputs[2] if len(inputs) > 2 and inputs[2] is not None else None  # TorchScript: positional
    dtype = _get_kwinputs(context, node, "dtype", default=[dtype])[0]  # torch.export: keyword
    dtype_name = NUM_TO_DTYPE_STRING[int(dtype.val)] if dtype is not None else types.builtin_to_string(ref.dtype)
    nptype = {"bool": np.bool_, "int32": np.int32, "fp16": np.float16}.get(dtype_name, np.float32)

    if isinstance(size, list):  # dynamic sizes arrive as a list of scalars
        size = mb.concat(values=size, axis=0)
    if size.can_be_folded_to_const():
        shape = tuple(int(d) for d in np.asarray(size.val).reshape(-1))
        if int(np.prod(shape)) <= 16:  # the scalar / tiny masks transformers builds: a const folds away
            context.add(mb.const(val=np.ones(shape, dtype=nptype), name=node.name))
            return
    if size.dtype != types.int32:
        size = mb.cast(x=size, dtype="int32")
    if dtype_name in ("bool", "int32", "fp16", "fp32"):  # the dtypes MIL `fill` produces directly
        context.add(mb.fill(shape=size, value=nptype(1), name=node.name))
    else:
        context.add(mb.cast(x=mb.fill(shape=size, value=np.float32(1)), dtype=dtype_name, name=node.name))


# --- bool-bitwise: torch.export's `__and__` kind is looked up before its dunders are stripped
# --- ('Unsupported fx node and_1, kind __and__'); bitwise_or/xor missing in 9.0 (PR #2668 adds or).


def _bool_binary(context: Any, node: Any, logical: str) -> None:
    """`a & b`, `a | b`, `a ^ b` on bool tensors (masks); MIL has only logical ops, as stock 9.0 assumes."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.frontend.torch.utils import TorchFrontend
    from coremltools.converters.mil.mil import types

    exported_dunder = node.kind.startswith("__") and context.frontend != TorchFrontend.TORCHSCRIPT
    if exported_dunder or logical != "logical_and":  # the cases stock 9.0 cannot convert
        _fired.add("bool-bitwise")
    x, y = _get_inputs(context, node, expected=2)
    if not (types.is_bool(x.dtype) and types.is_bool(y.dtype)):
        raise NotImplementedError(
            f"{node.kind} is only supported on bool tensors by Core ML, got "
            f"{types.builtin_to_string(x.dtype)} and {types.builtin_to_string(y.dtype)}"
        )
    context.add(getattr(mb, logical)(x=x, y=y, name=node.name))


def bitwise_and(context: Any, node: Any) -> None:
    _bool_binary(context, node, "logical_and")


def bitwise_or(context: Any, node: Any) -> None:
    _bool_binary(context, node, "logical_or")


def bitwise_xor(context: Any, node: Any) -> None:
    _bool_binary(context, node, "logical_xor")


# --- where-scalar: 'Unsupported fx node where, kind where.scalarother' (torch.export,
# --- `torch.where(cond, x, 0.0)`); 9.0 registers where.self and where.scalarself only.


def where_scalarother(context: Any, node: Any) -> None:
    """aten.where.ScalarOther(cond, self, other: scalar), converted like 9.0's `where`."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend import _utils
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs
    from coremltools.converters.mil.mil import types
    from coremltools.converters.mil.mil.ops.defs._utils import promote_input_dtypes
    from coremltools.converters.mil.mil.types.symbolic import any_symbolic

    _fired.add("where-scalar")
    cond, a, b = _get_inputs(context, node, expected=3)
    a, b = promote_input_dtypes([a, b])
    if not types.is_bool(cond.dtype):
        cond = mb.cast(x=cond, dtype="bool")
    if not any(any_symbolic(v.shape) for v in (cond, a, b)):
        cond, a, b = _utils.pymil_broadcast_tensors([cond, a, b])
    context.add(mb.select(cond=cond, a=a, b=b, name=node.name))


# --- max-pool-stride: 'node max_pool2d (max_pool2d) got 2 input(s), expected minimum 3 inputs'
# --- (torch.export drops the default stride=[]; 9.0 treats an empty stride as "= kernel size").


def max_pool1d(context: Any, node: Any) -> None:
    """Give 9.0's max_pool converter the empty `stride` that torch.export left out, then call it."""
    import copy

    if len(node.inputs) == 2 and _stock_max_pool is not None:
        _fired.add("max-pool-stride")
        node = copy.copy(node)
        node.inputs = [*node.inputs, []]
    assert _stock_max_pool is not None, "install_shims() registers max_pool1d"
    _stock_max_pool(context, node)


# --- recurrent-cells: 'Unsupported fx node lstm_cell' / 'gru_cell' (torch.export); 9.0 only has the
# --- sequence layers (aten::lstm / aten::gru).


def _add_outputs(context: Any, node: Any, values: tuple) -> None:
    """A tuple-returning op: TorchScript names each output, torch.export one node read by getitem."""
    if len(node.outputs) == len(values) > 1:
        for value, name in zip(values, node.outputs, strict=True):
            context.add(value, name)
    else:
        context.add(values, torch_name=node.name)


def _cell_inputs(context: Any, node: Any) -> tuple:
    """(x, hx, w_ih, w_hh, b_ih | None, b_hh | None) of aten::lstm_cell / aten::gru_cell."""
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    inputs = _get_inputs(context, node, min_expected=4)
    inputs = list(inputs) + [None] * (6 - len(inputs))
    return tuple(inputs[:6])


def _gate_projection(x: Any, weight: Any, bias: Any) -> Any:
    from coremltools.converters.mil import Builder as mb

    return mb.linear(x=x, weight=weight, bias=bias) if bias is not None else mb.linear(x=x, weight=weight)


def lstm_cell(context: Any, node: Any) -> None:
    """aten::lstm_cell(x, [h, c], w_ih, w_hh, b_ih, b_hh) -> (h', c'); gates i, f, g, o as in torch."""
    from coremltools.converters.mil import Builder as mb

    _fired.add("recurrent-cells")
    x, hx, w_ih, w_hh, b_ih, b_hh = _cell_inputs(context, node)
    h, c = hx
    gates = mb.add(x=_gate_projection(x, w_ih, b_ih), y=_gate_projection(h, w_hh, b_hh))
    i, f, g, o = mb.split(x=gates, num_splits=4, axis=-1)
    c_new = mb.add(x=mb.mul(x=mb.sigmoid(x=f), y=c), y=mb.mul(x=mb.sigmoid(x=i), y=mb.tanh(x=g)))
    h_new = mb.mul(x=mb.sigmoid(x=o), y=mb.tanh(x=c_new))
    _add_outputs(context, node, (h_new, c_new))


def gru_cell(context: Any, node: Any) -> None:
    """aten::gru_cell(x, h, w_ih, w_hh, b_ih, b_hh) -> h'; gates r, z, n as in torch (r scales W_hn h + b_hn)."""
    from coremltools.converters.mil import Builder as mb

    _fired.add("recurrent-cells")
    x, h, w_ih, w_hh, b_ih, b_hh = _cell_inputs(context, node)
    xr, xz, xn = mb.split(x=_gate_projection(x, w_ih, b_ih), num_splits=3, axis=-1)
    hr, hz, hn = mb.split(x=_gate_projection(h, w_hh, b_hh), num_splits=3, axis=-1)
    r = mb.sigmoid(x=mb.add(x=xr, y=hr))
    z = mb.sigmoid(x=mb.add(x=xz, y=hz))
    n = mb.tanh(x=mb.add(x=xn, y=mb.mul(x=r, y=hn)))
    # h' = (1 - z) * n + z * h = n + z * (h - n)
    context.add(mb.add(x=n, y=mb.mul(x=z, y=mb.sub(x=h, y=n)), name=node.name))


# --- unsafe-chunk: "convert function for op 'unsafe_chunk' not implemented" (trace of the cells) and
# --- 'Unsupported fx node unsafe_split' (torch.export): chunk / split without the aliasing checks.


def unsafe_chunk(context: Any, node: Any) -> None:
    """aten::unsafe_chunk(x, chunks, dim): torch.chunk's sizes (ceil(n / chunks) each, the last smaller)."""
    import math

    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    _fired.add("unsafe-chunk")
    x, chunks, dim = _get_inputs(context, node, expected=3)
    axis = int(dim.val)
    total = x.shape[axis]
    size = math.ceil(total / int(chunks.val))
    sizes = [size] * (total // size) + ([total % size] if total % size else [])
    _add_outputs(context, node, tuple(mb.split(x=x, split_sizes=sizes, axis=axis)))


def unsafe_split(context: Any, node: Any) -> None:
    """aten::unsafe_split(_with_sizes): 9.0's own split converter, which handles both argument forms."""
    _fired.add("unsafe-chunk")
    assert _stock_split is not None, "install_shims() registers unsafe_split"
    _stock_split(context, node)


# --- prelu-rank: 'prelu op: rank 3 or rank 5 input is only supported when all the values of alpha are
# --- same' (PReLU(C) after nn.Linear: rank 2, lifted to rank 3 by 9.0; after nn.Conv1d: rank 3).


def prelu(context: Any, node: Any) -> None:
    """Per-channel PReLU on a rank-2/3 input as MIL prelu on the input lifted to rank 4 (axis 1 = channels)."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    x, alpha = _get_inputs(context, node, expected=2)
    values = alpha.val if alpha.can_be_folded_to_const() else None
    uniform = values is None or np.size(values) <= 1 or bool(np.all(values == np.reshape(values, -1)[0]))
    if x.rank not in (2, 3) or uniform:
        assert _stock_prelu is not None, "install_shims() registers prelu"
        _stock_prelu(context, node)
        return
    _fired.add("prelu-rank")
    channels = x.shape[1]
    alpha_c = (np.ones((channels,), np.float32) * np.reshape(values, -1)).astype(np.float32)
    axes = list(range(x.rank, 4))
    lifted = mb.prelu(x=mb.expand_dims(x=x, axes=axes), alpha=alpha_c)
    context.add(mb.squeeze(x=lifted, axes=axes, name=node.name))


# --- gelu-tanh: GELU(approximate="tanh") converted as the exact GELU on the torch.export path (the
# --- keyword argument is never read): silently wrong numbers, ~1e-3.


def gelu(context: Any, node: Any) -> None:
    """aten::gelu(x, approximate="none" | "tanh"), the approximation read from positional or keyword input."""
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs

    inputs = _get_inputs(context, node, min_expected=1)
    positional = inputs[1] if len(inputs) > 1 else None
    approximate = _get_kwinputs(context, node, "approximate", default=[positional])[0]
    value = getattr(approximate, "val", approximate)
    if value == "tanh" and positional is None:  # the case stock 9.0 gets wrong
        _fired.add("gelu-tanh")
    if value not in (None, "none", "tanh"):
        raise NotImplementedError(f"gelu approximate={value!r} is not supported")
    mode = "TANH_APPROXIMATION" if value == "tanh" else "EXACT"
    context.add(mb.gelu(x=inputs[0], mode=mode, name=node.name))


# --- nearest-exact: 'Unsupported fx node _upsample_nearest_exact2d' (interpolate(mode="nearest-exact")).


def _upsample_nearest_exact2d(context: Any, node: Any) -> None:
    """Integer scale factors: the same pixels as mode="nearest", so 9.0's upsample_nearest2d converts it."""
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    inputs = _get_inputs(context, node, min_expected=1)
    x = inputs[0]
    size = getattr(inputs[1], "val", None) if len(inputs) > 1 and inputs[1] is not None else None
    scales = getattr(inputs[2], "val", None) if len(inputs) > 2 and inputs[2] is not None else None
    if size is not None:
        integer = all(int(o) % int(i) == 0 for o, i in zip(list(size), list(x.shape)[-2:], strict=True))
    else:
        integer = scales is not None and all(float(f).is_integer() for f in list(scales))
    if not integer:
        raise NotImplementedError(
            "interpolate(mode='nearest-exact') converts to Core ML only with integer scale factors; "
            "use mode='nearest' or an integer factor"
        )
    _fired.add("nearest-exact")
    assert _stock_upsample_nearest is not None, "install_shims() registers _upsample_nearest_exact2d"
    _stock_upsample_nearest(context, node)


# --- tensor-unfold: "Unsupported fx node unfold" / "convert function for op 'unfold' not implemented".


def unfold(context: Any, node: Any) -> None:
    """aten::unfold(x, dim, size, step): windows i*step .. i*step+size-1 along `dim`, as a new last axis."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs

    x, dim, size, step = _get_inputs(context, node, expected=4)
    rank = len(x.shape)
    axis = int(dim.val) % rank
    length, width, stride = x.shape[axis], int(size.val), int(step.val)
    if not isinstance(length, int) or width < 1 or stride < 1 or width > length:
        raise ValueError(f"unfold of a dim of {length} values into windows of {width} every {stride}: needs a "
                         "static length of at least the window size")  # fmt: skip
    _fired.add("tensor-unfold")
    count = (length - width) // stride + 1
    indices = (np.arange(count)[:, None] * stride + np.arange(width)[None, :]).astype(np.int32)
    windows = mb.gather(x=x, indices=indices, axis=axis)  # x.shape[:axis] + [count, width] + x.shape[axis+1:]
    perm = [*range(axis + 1), *range(axis + 2, rank + 1), axis + 1]  # the window axis goes last
    out = windows if perm == list(range(rank + 1)) else mb.transpose(x=windows, perm=perm)
    context.add(out, torch_name=node.name)


# --- zeros-like-dtype: torch.export's `zeros_like(x, dtype=...)` keyword never read by 9.0: the result keeps
# --- x's dtype (a bool key-padding mask stayed bool and flipped nn.MultiheadAttention's masking).


_NUMPY_OF = {"bool": "bool", "uint8": "uint8", "int8": "int8", "int16": "int16", "int32": "int32", "fp16": "float16",
             "fp32": "float32"}  # fmt: skip  # the MIL dtype strings coremltools maps torch dtypes to


def _zeros_of_shape(shape: Any, dtype: str, name: str) -> Any:
    """Zeros of a runtime shape: MIL `fill` makes bool/int32/fp16/fp32; other dtypes are cast from fp32 zeros."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb

    if dtype in ("bool", "int32", "fp16", "fp32"):
        return mb.fill(shape=shape, value=np.zeros((), dtype=_NUMPY_OF[dtype])[()], name=name)
    return mb.cast(x=mb.fill(shape=shape, value=np.float32(0)), dtype=dtype, name=name)


def _first_input_and_dtype(context: Any, node: Any, default: Callable[[Any], str]) -> tuple[Any, str, bool]:
    """(first input, the MIL dtype asked for, whether it came as a keyword that stock 9.0 ignores and that
    changes the result) of a zeros-like op; `default(first input)` when no dtype is given."""
    from coremltools.converters.mil.frontend.torch.ops import _get_inputs, _get_kwinputs
    from coremltools.converters.mil.frontend.torch.utils import NUM_TO_DTYPE_STRING

    inputs = _get_inputs(context, node, min_expected=1)
    positional = inputs[1] if len(inputs) > 1 and inputs[1] is not None else None
    dtype = _get_kwinputs(context, node, "dtype", default=[positional])[0]
    num = getattr(dtype, "val", dtype)
    fallback = default(inputs[0])
    target = NUM_TO_DTYPE_STRING[int(num)] if num is not None else fallback
    return inputs[0], target, positional is None and target != fallback


def zeros_like(context: Any, node: Any) -> None:
    """aten::zeros_like / empty_like(x, dtype=None, ...): zeros of x's shape in `dtype` (positional or keyword)."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    x, target, by_keyword = _first_input_and_dtype(context, node, lambda first: types.builtin_to_string(first.dtype))
    if by_keyword:
        _fired.add("zeros-like-dtype")
    if all(isinstance(d, int) for d in x.shape):
        context.add(mb.const(val=np.zeros(tuple(x.shape), dtype=_NUMPY_OF[target]), name=node.name))
    else:
        context.add(_zeros_of_shape(mb.shape(x=x), target, node.name))


# --- zeros-dtype: torch.export's `torch.zeros(size, dtype=...)` keyword never read by 9.0 (fp32 zeros; BEiT's
# --- int64 relative position index then fails in select_scatter: 'updates has dtype int32 whereas x has dtype fp32').


def zeros(context: Any, node: Any) -> None:
    """aten::zeros / empty(size, dtype=None, ...): zeros of `size` in `dtype` (positional or keyword; default fp32)."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    size, target, by_keyword = _first_input_and_dtype(context, node, lambda _: "fp32")
    if by_keyword:
        _fired.add("zeros-dtype")
    if isinstance(size, list):  # dynamic sizes arrive as a list of scalars
        size = mb.concat(values=size, axis=0)
    if size.can_be_folded_to_const():
        shape = tuple(int(d) for d in np.asarray(size.val).reshape(-1))
        context.add(mb.const(val=np.zeros(shape, dtype=_NUMPY_OF[target]), name=node.name))
        return
    if size.dtype != types.int32:
        size = mb.cast(x=size, dtype="int32")
    context.add(_zeros_of_shape(size, target, node.name))


# --- scalar-slot-copy: 'The updates tensor should have shape []. Got (1,)' (trace of `t[0, 0] = n`).


def _internal_op_tensor_inplace_copy(context: Any, node: Any) -> None:
    """9.0's in-place slice copy, with a 1-element update reshaped to a slot of the same element count."""
    import numpy as np
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.frontend.torch.ops import _get_slice_params, _translate_torch_tensor_assign
    from coremltools.converters.mil.mil.ops.defs._utils import promote_input_dtypes, solve_slice_by_index_shape

    data = context[node.inputs[0]]
    updates = context[node.inputs[1]]
    begin, end, stride, begin_mask, end_mask, squeeze_mask = _get_slice_params(context, data, node.inputs[2:])
    data, updates = promote_input_dtypes([data, updates])
    bounds = [getattr(v, "val", v) for v in (begin, end)]
    if all(b is not None for b in bounds) and all(isinstance(d, int) for d in (*data.shape, *updates.shape)):
        masks = [getattr(v, "val", v) for v in (stride, begin_mask, end_mask, squeeze_mask)]
        slot = tuple(int(d) for d in solve_slice_by_index_shape(data.shape, *bounds, *masks))
        if tuple(updates.shape) != slot and int(np.prod(slot)) == int(np.prod(updates.shape)) == 1:
            _fired.add("scalar-slot-copy")  # the case stock 9.0 rejects: a [1] update for a 0-d slot
            updates = mb.reshape(x=updates, shape=np.array(slot, dtype=np.int32)) if slot else mb.squeeze(x=updates)
    context.add(_translate_torch_tensor_assign(
        x=data, updates=updates, begin=begin, end=end, stride=stride, begin_mask=begin_mask, end_mask=end_mask,
        squeeze_mask=squeeze_mask, name=node.name,
    ))  # fmt: skip
