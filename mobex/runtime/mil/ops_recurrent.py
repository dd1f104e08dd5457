"""Recurrent MIL ops: `lstm`, `gru`, `rnn` (coremltools' `ops/defs/iOS15|17|18/recurrent.py`).

x is [seq, batch, input]; weights are [gates*H, input] / [gates*H, H] with the gates stacked in MIL's
order (LSTM: input, forget, output, cell; GRU: reset, output ("new"), update). The input projection
of every time step is one matmul up front; the recurrence is a loop over time.

Direction, as coremltools' own op tests (and Core ML) define it:
* `forward`: x[0] first.
* `reverse` (uni-directional): x[seq-1] first, and the output sequence is in *processing* order
  (output[k] is the state after k+1 steps of the reversed sequence), like running forward on the
  flipped input.
* `bidirectional` (LSTM): both, concatenated on the hidden axis, the backward half aligned with the
  input's time steps (torch's layout); without `output_sequence` the backward half is its final
  state, i.e. the one at time 0.
LSTM `clip` bounds the cell state after each update (the op tests' reference), peepholes feed
c_{t-1} into the input and forget gates and c_t into the output gate. GRU (iOS18) `reset_after`
applies the reset gate to the hidden projection including its bias, torch's formulation:
o = act(W_o x + b_io + r * (R_o h + b_ho)); otherwise o = act(W_o x + R_o (r * h) + b_o).
fp16 programs carry their state in fp16: it is rounded after every step.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .ops_common import Args, OpInfo, UnsupportedOpError, bval, f32, register, round_fp16, sval

Activation = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


# The op's activations with their default parameters (scaled_tanh: alpha=beta=1; hard_sigmoid:
# alpha=0.2, beta=0.5; linear: alpha=1, beta=0), as the MIL recurrent ops fix them.
ACTIVATIONS: dict[str, Activation] = {
    "tanh": np.tanh,
    "scaled_tanh": np.tanh,
    "sigmoid": _sigmoid,
    "hard_sigmoid": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "sigmoid_hard": lambda x: np.clip(0.2 * x + 0.5, 0.0, 1.0),
    "relu": lambda x: np.maximum(x, 0.0),
    "linear": lambda x: x,
}


def activation(a: Args, name: str, default: str, op_type: str) -> Activation:
    key = sval(a.get(name, default)).lower()
    if key not in ACTIVATIONS:
        raise UnsupportedOpError(op_type, f"{name}={key}")
    return ACTIVATIONS[key]


def _zeros_or(a: Args, name: str, size: int) -> np.ndarray:
    value = a.get(name)
    return np.zeros(size, dtype=np.float32) if value is None else f32(value).reshape(-1)


def _state_rounding(info: OpInfo) -> Callable[[np.ndarray], np.ndarray]:
    return round_fp16 if info.out_dtypes and info.out_dtypes[0] == "fp16" else (lambda v: v)


def _sequence_out(steps: list[np.ndarray], output_sequence: bool) -> np.ndarray:
    return np.stack(steps) if output_sequence else steps[-1][None]


# --------------------------------------------------------------------------- rnn


@register("rnn")
def _rnn(a: Args, info: OpInfo):
    x = f32(a["x"])
    w_ih, w_hh = f32(a["weight_ih"]), f32(a["weight_hh"])
    act = activation(a, "activation", "tanh", "rnn")
    bias = _zeros_or(a, "bias", w_hh.shape[0])
    rnd = _state_rounding(info)
    xs = x[::-1] if sval(a.get("direction", "forward")) == "reverse" else x
    proj = xs @ w_ih.T + bias
    h = f32(a["initial_h"])
    outs = []
    for t in range(xs.shape[0]):
        h = rnd(act(proj[t] + h @ w_hh.T))
        outs.append(h)
    return _sequence_out(outs, bval(a.get("output_sequence", False))), h


# --------------------------------------------------------------------------- gru


@register("gru")
def _gru(a: Args, info: OpInfo):
    x = f32(a["x"])
    w_ih, w_hh = f32(a["weight_ih"]), f32(a["weight_hh"])
    hidden = w_hh.shape[1]
    rec, act = activation(a, "recurrent_activation", "sigmoid", "gru"), activation(a, "activation", "tanh", "gru")
    b_h = _zeros_or(a, "bias", 3 * hidden)
    b_i = _zeros_or(a, "input_bias", 3 * hidden)
    reset_after = bval(a.get("reset_after", False))
    if not reset_after:  # one bias for both projections
        b_i, b_h = b_i + b_h, np.zeros_like(b_h)
    rnd = _state_rounding(info)
    xs = x[::-1] if sval(a.get("direction", "forward")) == "reverse" else x
    proj = xs @ w_ih.T + b_i  # [seq, batch, 3H]: r, o, z
    w_r, w_o, w_z = np.split(w_hh, 3)
    w_rz = np.concatenate([w_r, w_z])
    b_hr, b_ho, b_hz = np.split(b_h, 3)
    b_rz = np.concatenate([b_hr, b_hz])
    h = f32(a["initial_h"])
    outs = []
    for t in range(xs.shape[0]):
        p_r, p_o, p_z = np.split(proj[t], 3, axis=-1)
        rz = h @ w_rz.T + b_rz
        r, z = rec(p_r + rz[..., :hidden]), rec(p_z + rz[..., hidden:])
        if reset_after:
            o = act(p_o + r * (h @ w_o.T + b_ho))
        else:
            o = act(p_o + (r * h) @ w_o.T)
        h = rnd((1.0 - z) * o + z * h)
        outs.append(h)
    return _sequence_out(outs, bval(a.get("output_sequence", False))), h


# --------------------------------------------------------------------------- lstm


def _lstm_direction(
    xs: np.ndarray, h: np.ndarray, c: np.ndarray, weights: tuple[np.ndarray, ...], acts, clip, rnd
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """One direction over `xs` in order; returns the per-step h and the final h and c."""
    w_ih, w_hh, bias, peep = weights
    rec, cell_act, out_act = acts
    hidden = w_hh.shape[1]
    p_i, p_f, p_o = np.split(peep, 3)
    proj = xs @ w_ih.T + bias  # [seq, batch, 4H]: i, f, o, z
    outs = []
    for t in range(xs.shape[0]):
        g = proj[t] + h @ w_hh.T
        i = rec(g[..., :hidden] + c * p_i)
        f = rec(g[..., hidden : 2 * hidden] + c * p_f)
        z = cell_act(g[..., 3 * hidden :])
        c = f * c + i * z
        if clip is not None:
            c = np.clip(c, -clip, clip)
        c = rnd(c)
        o = rec(g[..., 2 * hidden : 3 * hidden] + c * p_o)
        h = rnd(o * out_act(c))
        outs.append(h)
    return outs, h, c


def _lstm_weights(a: Args, suffix: str) -> tuple[np.ndarray, ...]:
    w_ih, w_hh = f32(a["weight_ih" + suffix]), f32(a["weight_hh" + suffix])
    hidden = w_hh.shape[1]
    return w_ih, w_hh, _zeros_or(a, "bias" + suffix, 4 * hidden), _zeros_or(a, "peephole" + suffix, 3 * hidden)


@register("lstm")
def _lstm(a: Args, info: OpInfo):
    x = f32(a["x"])
    direction = sval(a.get("direction", "forward"))
    acts = (
        activation(a, "recurrent_activation", "sigmoid", "lstm"),
        activation(a, "cell_activation", "tanh", "lstm"),
        activation(a, "activation", "tanh", "lstm"),
    )
    clip = None if a.get("clip") is None else float(np.asarray(a["clip"]).item())
    rnd = _state_rounding(info)
    output_sequence = bval(a.get("output_sequence", False))
    h0, c0 = f32(a["initial_h"]), f32(a["initial_c"])
    forward = _lstm_weights(a, "")
    if direction != "bidirectional":
        xs = x[::-1] if direction == "reverse" else x
        outs, h, c = _lstm_direction(xs, h0, c0, forward, acts, clip, rnd)
        return _sequence_out(outs, output_sequence), h, c
    hidden = forward[1].shape[1]
    outs_f, h_f, c_f = _lstm_direction(x, h0[..., :hidden], c0[..., :hidden], forward, acts, clip, rnd)
    backward = _lstm_weights(a, "_back")
    outs_b, h_b, c_b = _lstm_direction(x[::-1], h0[..., hidden:], c0[..., hidden:], backward, acts, clip, rnd)
    outs_b = outs_b[::-1]  # align with the input's time steps
    if output_sequence:
        seq = np.concatenate([np.stack(outs_f), np.stack(outs_b)], axis=-1)
    else:
        seq = np.concatenate([outs_f[-1], outs_b[0]], axis=-1)[None]
    return seq, np.concatenate([h_f, h_b], axis=-1), np.concatenate([c_f, c_b], axis=-1)
