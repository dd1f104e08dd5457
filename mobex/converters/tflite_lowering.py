"""Lowering fixes for litert-torch 0.10: PReLU as TFLite's PRELU op, recurrent layers lowered in one piece,
`expand` as TFLite's BROADCAST_TO, non-overlapping `fold` / `unfold` as reshapes and a transpose.

litert-torch turns a torch graph into TFLite in three steps: torch.export, decomposition to core ATen
(run twice: before its layout passes and before lowering), and a lowering of each ATen op to MLIR.
Two of its defaults cost mobile apps dearly (issue 13):

- `prelu`: litert-torch decomposes `_prelu_kernel` into RELU / MUL / SUB / NEG (its comment says the
  GPU delegate rejects GREATER + SELECT). XNNPACK has a PRELU kernel; the decomposed form makes every
  PReLU three to four ops, and in int8 each of them a requantization. The fix keeps
  `_prelu_kernel` through the layout passes (litert-torch moves it to NHWC itself) and lowers it to
  one `tfl.prelu`, with alpha broadcast to the input's rank minus one (what PRELU requires).
- `lstm` / `gru` / `rnn_tanh` / `rnn_relu` (`nn.LSTM`, `nn.GRU`, `nn.RNN`): torch's decomposition
  unrolls every time step into ATen ops before the graph is re-traced twice by
  `run_decompositions`; the re-traces grow faster than linearly with the number of ops (a 3-layer
  LSTM over 160 steps: several minutes). The fix replaces each recurrent layer by one opaque
  custom op (`mobex_tfl.lstm`, ...) that the re-traces carry as a single node, and lowers it to
  MLIR in JAX: the input projection of all steps as one matmul, then per step one matmul with the
  recurrent weights and the gate math. The TFLite graph is the same unrolled form the stock path
  produces (FULLY_CONNECTED, LOGISTIC, TANH, MUL, ADD on XNNPACK), built in seconds.

One default is wrong, not slow:

- `expand`: litert-torch lowers `aten.expand` to `stablehlo.broadcast_in_dim`. The converter folds a
  transpose that follows it into the broadcast's dimensions (legal StableHLO: a permuting
  `broadcast_dimensions`), and its TFLite legalization of `broadcast_in_dim` then ignores the
  permutation: BROADCAST_TO gets the untransposed input. Where the broadcast adds no size-1 axis to
  move, LiteRT rejects the model at allocation ("Output shape must be broadcastable", the
  global-pool branch of an ASPP head, which litert-torch's NHWC pass follows with a transpose); where
  it does, the data are silently read in the wrong order (grouped-query attention: `repeat_kv`'s
  expand of the keys, then `k.transpose(2, 3)` for `q @ k^T`, gives wrong attention, logits off by
  ~1). The fix lowers `aten.expand`, after the layout passes, to litert-torch's own `tfl.broadcast_to`
  op, which reaches the converter as TFLite's BROADCAST_TO: the transpose after it stays a TRANSPOSE.
- `col2im` (`nn.functional.fold`, `nn.Fold`): torch's decomposition is an accumulating
  `index_put`, which the converter emits as STABLEHLO_SCATTER; LiteRT rejects that node at
  allocation ("Only update, Add, Multiply, Maximum and Minimum operations are currently supported
  for stablehlo.scatter"; found by MobileViTV2, which folds its patches back to a feature map). When
  the patches do not overlap (stride = kernel, no padding or dilation, as MobileViT uses it), fold
  is a reshape, one transpose and a reshape, which the fix emits; `im2col` (`unfold`) of that kind
  likewise, instead of a GATHER_ND. Overlapping patches keep the stock path.

Why not TFLite's fused UNIDIRECTIONAL_SEQUENCE_LSTM: XNNPACK has no kernel for it (it runs on
LiteRT's builtin kernel, outside the delegate), its state operands are *variable* tensors that
keep the last call's final state for the next call (a stateless `nn.LSTM` would silently carry
state between inferences unless every app calls `resetVariableTensors`), and TFLite has no builtin
GRU at all. The unrolled form runs in XNNPACK and is stateless, like the torch model.

`install()` registers everything once per process; `uninstall()` restores litert-torch's own
decompositions, so tests can show the stock behaviour next to the fixed one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

_installed = False
_stock: dict[tuple[str, Any], Any] = {}  # (table name, op overload) -> litert-torch's own entry (None: absent)
_registered_ops = False


@dataclass(frozen=True)
class LoweringFix:
    """One lowering fix: the ATen ops it takes over and what litert-torch does with them by default."""

    name: str
    aten_ops: tuple[str, ...]
    stock: str


FIXES: tuple[LoweringFix, ...] = (
    LoweringFix(
        "prelu",
        ("_prelu_kernel",),
        "litert-torch 0.10 decomposes PReLU to relu(x) - w * relu(-x): RELU, NEG, RELU, MUL, SUB per PReLU "
        "instead of TFLite's PRELU, which XNNPACK runs as one op",
    ),
    LoweringFix(
        "conv-string-padding",
        ("conv1d.padding", "conv2d.padding"),
        "Conv1d/Conv2d(padding='same' | 'valid') stay aten.conv1d.padding, for which litert-torch 0.10 has no "
        "lowering ('Lowering not found'; found by the coverage zoo's pitch CNN)",
    ),
    LoweringFix(
        "recurrent",
        ("lstm.input", "gru.input", "rnn_tanh.input", "rnn_relu.input"),
        "torch's decomposition unrolls every step before two re-traces of the whole graph: conversion time "
        "grows faster than the number of steps (3-layer LSTM, 160 steps: minutes)",
    ),
    LoweringFix(
        "expand-broadcast",
        ("expand",),
        "aten.expand becomes stablehlo.broadcast_in_dim; the converter folds a following transpose into its "
        "dimensions and legalizes that to BROADCAST_TO without the transpose: LiteRT rejects the model "
        "('Output shape must be broadcastable', ASPP global-pool expand) or computes garbage (GQA repeat_kv "
        "before k.transpose: llama / qwen2 logits off by ~1)",
    ),
    LoweringFix(
        "fold-unfold",
        ("col2im", "im2col"),
        "nn.functional.fold becomes an accumulating index_put, emitted as STABLEHLO_SCATTER, which LiteRT "
        "rejects at allocation ('Only update, Add, Multiply, Maximum and Minimum operations are currently "
        "supported for stablehlo.scatter'; MobileViTV2); unfold becomes a GATHER_ND",
    ),
)


def install() -> tuple[LoweringFix, ...]:
    """Register the custom ops, their lowerings and the decomposition overrides; safe to call many times."""
    global _installed
    if _installed:
        return FIXES
    import torch

    _register_ops()
    aten = torch.ops.aten
    _override("pre_convert", aten._prelu_kernel.default, None)  # keep PReLU whole through the layout passes
    _override("pre_lower", aten._prelu_kernel.default, _prelu_to_tfl)
    for op in (aten.conv1d.padding, aten.conv2d.padding):
        _override("pre_convert", op, _conv_explicit_padding)
        _override("pre_lower", op, _conv_explicit_padding)
    for op, decomp in (
        (aten.lstm.input, _lstm_to_custom),
        (aten.gru.input, _gru_to_custom),
        (aten.rnn_tanh.input, _rnn_tanh_to_custom),
        (aten.rnn_relu.input, _rnn_relu_to_custom),
    ):
        _override("pre_convert", op, decomp)
        _override("pre_lower", op, decomp)
    _override("pre_lower", aten.expand.default, _expand_to_tfl)  # after the layout passes, which know aten.expand
    for op, decomp in ((aten.col2im.default, _col2im_as_transpose), (aten.im2col.default, _im2col_as_transpose)):
        _override("pre_convert", op, decomp)
        _override("pre_lower", op, decomp)
    _installed = True
    return FIXES


@contextlib.contextmanager
def recurrent_modules_as_custom_ops(model: Any) -> Iterator[int]:
    """While converting: every `nn.LSTM` / `nn.GRU` / `nn.RNN` in `model` calls the `mobex_tfl` op directly.

    torch.export computes the output shapes of `aten.lstm` by running torch's decomposition on fake
    tensors, step by step (a 3-layer LSTM over 160 steps: ~20 s before any conversion starts). The
    custom op gives its shapes at once and runs torch's own kernel in eager mode, so outputs are
    unchanged. Yields how many modules were patched; the original `forward`s come back afterwards.
    """
    import torch

    install()
    patched = []
    for module in model.modules():
        if type(module) in (torch.nn.LSTM, torch.nn.GRU, torch.nn.RNN) and not getattr(module, "proj_size", 0):
            module.forward = _custom_forward(module)
            patched.append(module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward  # the instance attribute; the class's forward is back


def _custom_forward(module: Any) -> Callable:
    """A forward for one recurrent module that calls mobex_tfl.{lstm,gru,rnn} (tensors in, no PackedSequence)."""
    import torch

    kind = {torch.nn.LSTM: "lstm", torch.nn.GRU: "gru"}.get(type(module), "rnn")
    directions = 2 if module.bidirectional else 1

    def forward(x: Any, hx: Any = None) -> Any:
        if not isinstance(x, torch.Tensor) or x.dim() != 3:  # PackedSequence or unbatched: torch's own path
            return type(module).forward(module, x, hx)
        batch = x.shape[0] if module.batch_first else x.shape[1]
        if hx is None:
            zeros = x.new_zeros(module.num_layers * directions, batch, module.hidden_size)
            hx = (zeros, zeros) if kind == "lstm" else zeros
        params = list(module._flat_weights)  # noqa: SLF001 - the weights in torch.lstm's order
        args = (module.bias, module.num_layers, module.bidirectional, module.batch_first)
        if kind == "lstm":
            y, h, c = torch.ops.mobex_tfl.lstm(x, list(hx), params, *args)
            return y, (h, c)
        if kind == "gru":
            return torch.ops.mobex_tfl.gru(x, hx, params, *args)
        return torch.ops.mobex_tfl.rnn(x, hx, params, *args, module.nonlinearity)

    return forward


def uninstall() -> None:
    """Put litert-torch's own decompositions back (the custom ops and their lowerings stay registered)."""
    global _installed
    for (table, op), entry in _stock.items():
        target = _table(table)
        if entry is None:
            target.pop(op, None)
        else:
            target[op] = entry
    _stock.clear()
    _installed = False


def _table(name: str) -> dict:
    from litert_torch.fx_infra import decomp

    return decomp._pre_convert_decomp if name == "pre_convert" else decomp._pre_lower_decomp  # noqa: SLF001


def _override(table: str, op: Any, decomposition: Callable | None) -> None:
    target = _table(table)
    # torch's CustomDecompTable answers `get` with None for the entries it materializes lazily: index it.
    _stock.setdefault((table, op), target[op] if op in target else None)
    if decomposition is None:
        target.pop(op, None)
    else:
        target[op] = decomposition


# --- custom ops: opaque to torch's decompositions, lowered by mobex ----------------------------------


def _register_ops() -> None:
    """Define `mobex_tfl.prelu`, `.lstm`, `.gru`, `.rnn` (eager = torch's own kernels) and their lowerings."""
    global _registered_ops
    if _registered_ops:
        return
    import torch
    from litert_torch.backend.experimental.torch_tfl import _ops  # noqa: F401 - registers torch.ops.tfl.broadcast_to

    torch.library.define("mobex_tfl::prelu", "(Tensor x, Tensor alpha) -> Tensor")
    torch.library.define(
        "mobex_tfl::lstm",
        "(Tensor input, Tensor[] hx, Tensor[] params, bool has_biases, int num_layers, bool bidirectional, "
        "bool batch_first) -> (Tensor, Tensor, Tensor)",
    )
    torch.library.define(
        "mobex_tfl::gru",
        "(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, bool bidirectional, "
        "bool batch_first) -> (Tensor, Tensor)",
    )
    torch.library.define(
        "mobex_tfl::rnn",
        "(Tensor input, Tensor hx, Tensor[] params, bool has_biases, int num_layers, bool bidirectional, "
        "bool batch_first, str nonlinearity) -> (Tensor, Tensor)",
    )
    for name, eager, fake in (
        ("prelu", _prelu_eager, _prelu_eager),
        ("lstm", _lstm_eager, _lstm_fake),
        ("gru", _gru_eager, _single_state_fake),
        ("rnn", _rnn_eager, _single_state_fake),
    ):
        torch.library.impl(f"mobex_tfl::{name}", "CompositeExplicitAutograd")(eager)
        torch.library.register_fake(f"mobex_tfl::{name}")(fake)
    _register_lowerings()
    _registered_ops = True


def _prelu_eager(x: Any, alpha: Any) -> Any:
    import torch

    return torch.where(x > 0, x, x * alpha)


def _lstm_eager(x, hx, params, has_biases, num_layers, bidirectional, batch_first):  # noqa: ANN001, ANN202
    import torch

    y, h, c = torch.lstm(x, list(hx), list(params), has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    return y.clone(), h.clone(), c.clone()


def _output_like(x, hx, params, bidirectional, batch_first):  # noqa: ANN001, ANN202
    """The layer output's shape from the input and the last layer's recurrent weight (no computation:
    running torch's own kernel on fake tensors unrolls every step, minutes for long sequences)."""
    hidden = params[1].shape[1]
    steps, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    shape = (batch, steps) if batch_first else (steps, batch)
    return x.new_empty((*shape, hidden * (2 if bidirectional else 1)))


def _lstm_fake(x, hx, params, has_biases, num_layers, bidirectional, batch_first):  # noqa: ANN001, ANN202, ARG001
    return _output_like(x, hx, params, bidirectional, batch_first), hx[0].new_empty(hx[0].shape), hx[1].new_empty(
        hx[1].shape
    )


def _single_state_fake(x, hx, params, has_biases, num_layers, bidirectional, batch_first, *rest):  # noqa: ANN001, ANN002, ANN202, ARG001
    return _output_like(x, hx, params, bidirectional, batch_first), hx.new_empty(hx.shape)


def _gru_eager(x, hx, params, has_biases, num_layers, bidirectional, batch_first):  # noqa: ANN001, ANN202
    import torch

    y, h = torch.gru(x, hx, list(params), has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    return y.clone(), h.clone()


def _rnn_eager(x, hx, params, has_biases, num_layers, bidirectional, batch_first, nonlinearity):  # noqa: ANN001, ANN202
    import torch

    fn = torch.rnn_tanh if nonlinearity == "tanh" else torch.rnn_relu
    y, h = fn(x, hx, list(params), has_biases, num_layers, 0.0, False, bidirectional, batch_first)
    return y.clone(), h.clone()


# --- decompositions: ATen -> mobex_tfl ---------------------------------------------------------------


def _prelu_to_tfl(x: Any, weight: Any) -> Any:
    """`_prelu_kernel(x, w)` as `tfl.prelu(x, alpha)`: alpha has x's rank minus one, as PRELU requires.

    `w` arrives shaped to broadcast against x (NCHW [C, 1, 1], or NHWC [1, 1, C] after litert-torch's
    layout pass); a weight that broadcasts over the batch axis too keeps the stock form.
    """
    import torch

    if weight.dim() > x.dim() or x.dim() < 2:
        return torch.relu(x) - weight * torch.relu(-x)
    shape = [1] * (x.dim() - weight.dim()) + list(weight.shape)
    if shape[0] != 1:
        return torch.relu(x) - weight * torch.relu(-x)
    return torch.ops.mobex_tfl.prelu(x, weight.reshape(shape[1:]))


def _conv_explicit_padding(x, weight, bias=None, stride=1, padding="valid", dilation=1, groups=1):  # noqa: ANN001, ANN202
    """conv with padding="same" / "valid" as an explicit-padding convolution; "same" pads the extra
    element at the end, as torch does when the total padding is odd."""
    import torch

    dims = weight.dim() - 2

    def per_dim(v: Any) -> list[int]:
        return [int(v)] * dims if isinstance(v, int) else [int(d) for d in v]

    stride, dilation = per_dim(stride), per_dim(dilation)
    if padding == "valid":
        before = after = [0] * dims
    else:
        totals = [d * (k - 1) for d, k in zip(dilation, weight.shape[2:], strict=True)]
        before = [t // 2 for t in totals]
        after = [t - b for t, b in zip(totals, before, strict=True)]
    if before != after:
        pads = [p for b, a in zip(reversed(before), reversed(after), strict=True) for p in (b, a)]
        x = torch.nn.functional.pad(x, pads)
        before = [0] * dims
    return torch.ops.aten.convolution.default(x, weight, bias, stride, before, dilation, False, [0] * dims, groups)


def _expand_to_tfl(x: Any, size: Any, *, implicit: bool = False) -> Any:  # noqa: ARG001 - torch's signature
    """`aten.expand` as litert-torch's `tfl.broadcast_to`, lowered straight to TFLite's BROADCAST_TO.

    Not `stablehlo.broadcast_in_dim` (the stock lowering): the converter folds a following transpose
    into it and loses the transpose (module docstring). Symbolic sizes keep the stock lowering.
    """
    import torch

    lead = len(size) - x.dim()
    if lead < 0 or not all(isinstance(s, int) for s in size) or not all(isinstance(s, int) for s in x.shape):
        return NotImplemented
    shape = [x.shape[i - lead] if s == -1 and i >= lead else s for i, s in enumerate(size)]
    return torch.ops.tfl.broadcast_to(x, shape)


def _tiles(size: Any, kernel: Any, dilation: Any, padding: Any, stride: Any) -> list[int] | None:
    """Patches per axis when fold / unfold's patches tile `size` exactly (stride = kernel, no padding,
    no dilation); None otherwise (overlapping, strided or cropped patches keep torch's decomposition)."""
    if list(dilation) != [1, 1] or list(padding) != [0, 0] or list(stride) != list(kernel):
        return None
    if not all(isinstance(v, int) for v in (*size, *kernel)) or any(n % k for n, k in zip(size, kernel, strict=True)):
        return None
    return [n // k for n, k in zip(size, kernel, strict=True)]


def _col2im_as_transpose(x: Any, output_size: Any, kernel_size: Any, dilation: Any, padding: Any, stride: Any) -> Any:
    """`fold` of non-overlapping patches: [B, C*kh*kw, L] -> [B, C, H, W] by reshape, transpose, reshape
    (torch's accumulating index_put becomes a STABLEHLO_SCATTER LiteRT cannot run; module docstring)."""
    tiles = _tiles(output_size, kernel_size, dilation, padding, stride)
    if tiles is None or x.dim() not in (2, 3):
        return NotImplemented
    batched = x if x.dim() == 3 else x.unsqueeze(0)
    (kh, kw), (th, tw) = kernel_size, tiles
    batch, columns = batched.shape[0], batched.shape[1]
    if not isinstance(columns, int) or columns % (kh * kw):
        return NotImplemented
    channels = columns // (kh * kw)
    y = batched.reshape(batch, channels, kh, kw, th, tw).permute(0, 1, 4, 2, 5, 3)
    y = y.reshape(batch, channels, th * kh, tw * kw)
    return y if x.dim() == 3 else y.squeeze(0)


def _im2col_as_transpose(x: Any, kernel_size: Any, dilation: Any, padding: Any, stride: Any) -> Any:
    """`unfold` into non-overlapping patches: [B, C, H, W] -> [B, C*kh*kw, L] by reshape, transpose, reshape
    (instead of torch's index arithmetic and a GATHER_ND)."""
    if x.dim() not in (3, 4):
        return NotImplemented
    tiles = _tiles(x.shape[-2:], kernel_size, dilation, padding, stride)
    if tiles is None:
        return NotImplemented
    batched = x if x.dim() == 4 else x.unsqueeze(0)
    (kh, kw), (th, tw) = kernel_size, tiles
    batch, channels = batched.shape[0], batched.shape[1]
    y = batched.reshape(batch, channels, th, kh, tw, kw).permute(0, 1, 3, 5, 2, 4)
    y = y.reshape(batch, channels * kh * kw, th * tw)
    return y if x.dim() == 4 else y.squeeze(0)


def _lstm_to_custom(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):  # noqa: ANN001, ANN202, ARG001
    if hx[0].shape[-1] != hx[1].shape[-1]:  # proj_size > 0: torch's own decomposition handles it
        return NotImplemented
    return torch_ops().lstm(x, list(hx), list(params), has_biases, num_layers, bidirectional, batch_first)


def _gru_to_custom(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):  # noqa: ANN001, ANN202, ARG001
    return torch_ops().gru(x, hx, list(params), has_biases, num_layers, bidirectional, batch_first)


def _rnn_to_custom(nonlinearity: str) -> Callable:
    def decomposition(x, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):  # noqa: ANN001, ANN202, ARG001
        return torch_ops().rnn(x, hx, list(params), has_biases, num_layers, bidirectional, batch_first, nonlinearity)

    return decomposition


_rnn_tanh_to_custom = _rnn_to_custom("tanh")
_rnn_relu_to_custom = _rnn_to_custom("relu")


def torch_ops() -> Any:
    import torch

    return torch.ops.mobex_tfl


# --- lowerings: mobex_tfl -> MLIR --------------------------------------------------------------------


def _register_lowerings() -> None:
    import torch
    from litert_torch.backend.experimental.torch_tfl._lowerings import _ir_operation
    from litert_torch.backend.lowerings import registry
    from litert_torch.backend.lowerings import utils as lowering_utils
    from litert_torch.backend.lowerings._jax_lowerings.lowerings import lower_by_jax

    @registry.lower(torch.ops.mobex_tfl.prelu.default)
    def _prelu(lctx: Any, x: Any, alpha: Any) -> Any:
        return _ir_operation("tfl.prelu", results=lowering_utils.node_meta_to_ir_types(lctx.node), operands=[x, alpha])

    lower_by_jax(torch.ops.mobex_tfl.lstm.default)(_jax_lstm)
    lower_by_jax(torch.ops.mobex_tfl.gru.default)(_jax_gru)
    lower_by_jax(torch.ops.mobex_tfl.rnn.default)(_jax_rnn)


def _layers(params: tuple, has_biases: bool, num_layers: int, bidirectional: bool) -> list[list[tuple]]:
    """torch's flat weight list -> per layer, per direction (w_ih, w_hh, b_ih | None, b_hh | None)."""
    per = 4 if has_biases else 2
    directions = 2 if bidirectional else 1
    out = []
    for layer in range(num_layers):
        dirs = []
        for d in range(directions):
            chunk = params[(layer * directions + d) * per : (layer * directions + d + 1) * per]
            dirs.append((chunk[0], chunk[1], chunk[2] if has_biases else None, chunk[3] if has_biases else None))
        out.append(dirs)
    return out


def _scan(x, directions, step, states, bidirectional, fold):  # noqa: ANN001, ANN202
    """Run one layer (both directions) over x [T, B, I], unrolled; `step(gx_t, state, weights) -> state`.

    The input projection of all T steps is one matmul; each step adds the recurrent projection.
    `fold`: the recurrent bias is added to the input projection too (exact for LSTM and RNN).
    Returns the layer's output [T, B, H * directions] and each direction's final state.
    """
    import jax.numpy as jnp

    steps = x.shape[0]
    outputs, finals = [], []
    for d, (w_ih, w_hh, b_ih, b_hh) in enumerate(directions):
        gx = jnp.einsum("tbi,gi->tbg", x, w_ih)
        if b_ih is not None:
            gx = gx + (b_ih + b_hh if fold else b_ih)
        w_hh_t = w_hh.T  # once per layer: inside the loop it would be one constant transpose per step
        state = states[d]
        ys = [None] * steps
        order = range(steps - 1, -1, -1) if d == 1 else range(steps)
        for t in order:
            state = step(gx[t], state, w_hh_t, b_hh)
            ys[t] = state[0]
        outputs.append(_stack(ys))
        finals.append(state)
    return (jnp.concatenate(outputs, axis=-1) if bidirectional else outputs[0]), finals


_XNNPACK_MAX_CONCAT = 4  # XNNPACK's CONCATENATION takes 2..4 inputs here; more leave the delegate


def _stack(steps: list) -> Any:
    """`jnp.stack` as a tree of concatenations of at most four inputs, so every one stays in XNNPACK.

    The converter merges directly nested concatenations back into one wide op, so each level
    reshapes its parts (a no-op on the data) between rank 3 and rank 2, which it does not fold.
    """
    import jax.numpy as jnp

    batch, hidden = steps[0].shape
    parts = [s[None] for s in steps]
    level = 0
    while len(parts) > 1:
        groups = [parts[i : i + _XNNPACK_MAX_CONCAT] for i in range(0, len(parts), _XNNPACK_MAX_CONCAT)]
        parts = [jnp.concatenate(g, axis=0) if len(g) > 1 else g[0] for g in groups]
        level += 1
        parts = [p.reshape(-1, hidden) if level % 2 else p.reshape(-1, batch, hidden) for p in parts]
    return parts[0].reshape(len(steps), batch, hidden)


def _recurrent(x, states, params, has_biases, num_layers, bidirectional, batch_first, step, fold=False):  # noqa: ANN001, ANN202
    """Shared driver: layout, layers, directions; `states[k]` is a tuple of [layers*dirs, B, H] arrays."""
    import jax.numpy as jnp

    if batch_first:
        x = jnp.swapaxes(x, 0, 1)
    directions = 2 if bidirectional else 1
    finals = []
    for layer, weights in enumerate(_layers(params, has_biases, num_layers, bidirectional)):
        start = [tuple(s[layer * directions + d] for s in states) for d in range(directions)]
        x, layer_finals = _scan(x, weights, step, start, bidirectional, fold)
        finals.extend(layer_finals)
    if batch_first:
        x = jnp.swapaxes(x, 0, 1)
    return x, [jnp.stack([f[k] for f in finals]) for k in range(len(states))]


def _jax_lstm(x, hx, params, has_biases, num_layers, bidirectional, batch_first):  # noqa: ANN001, ANN202
    """torch's LSTM: gates i, f, g, o; both biases go into the all-steps input projection. One LOGISTIC
    and one TANH over all four gates per step (fewer, wider ops: the converter's time grows with ops)."""
    import jax
    import jax.numpy as jnp

    def step(gx, state, w_hh_t, b_hh):  # noqa: ANN001, ANN202, ARG001 - b_hh folded into gx
        h, c = state
        gates = gx + h @ w_hh_t
        sig, tanh = jax.nn.sigmoid(gates), jnp.tanh(gates)
        size = h.shape[-1]
        i, f, o = sig[:, :size], sig[:, size : 2 * size], sig[:, 3 * size :]
        c = f * c + i * tanh[:, 2 * size : 3 * size]
        return o * jnp.tanh(c), c

    y, (h, c) = _recurrent(x, tuple(hx), params, has_biases, num_layers, bidirectional, batch_first, step, fold=True)
    return y, h, c


def _jax_gru(x, hx, params, has_biases, num_layers, bidirectional, batch_first):  # noqa: ANN001, ANN202
    import jax
    import jax.numpy as jnp

    def step(gx, state, w_hh_t, b_hh):  # noqa: ANN001, ANN202
        (h,) = state
        gh = h @ w_hh_t
        if b_hh is not None:
            gh = gh + b_hh
        xr, xz, xn = jnp.split(gx, 3, axis=-1)
        hr, hz, hn = jnp.split(gh, 3, axis=-1)
        r = jax.nn.sigmoid(xr + hr)
        z = jax.nn.sigmoid(xz + hz)
        n = jnp.tanh(xn + r * hn)
        return ((1 - z) * n + z * h,)

    y, (h,) = _recurrent(x, (hx,), params, has_biases, num_layers, bidirectional, batch_first, step)
    return y, h


def _jax_rnn(x, hx, params, has_biases, num_layers, bidirectional, batch_first, nonlinearity):  # noqa: ANN001, ANN202
    import jax
    import jax.numpy as jnp

    act = jnp.tanh if nonlinearity == "tanh" else jax.nn.relu

    def step(gx, state, w_hh_t, b_hh):  # noqa: ANN001, ANN202, ARG001 - b_hh folded into gx
        (h,) = state
        return (act(gx + h @ w_hh_t),)

    y, (h,) = _recurrent(x, (hx,), params, has_biases, num_layers, bidirectional, batch_first, step, fold=True)
    return y, h
