"""lstm / gru / rnn in the MIL reference interpreter, built with coremltools' MIL Builder and
compared with torch's recurrent layers (weights re-ordered into MIL's gate order) or, for what
torch has no counterpart of (peepholes, clip, MIL's own GRU formula, other activations), with
numpy written out from the op definitions."""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
from coremltools.converters.mil import Builder as mb

from mobex.runtime.mil import MilReferenceRunner

TOL = 1e-5


def _run(mil, prog, feed, target=ct.target.iOS17):
    runner = MilReferenceRunner(mil.convert_program(prog, target=target))
    assert runner.unsupported_ops() == []
    return runner.run(feed)


def _ifzo_to_ifoz(w: np.ndarray) -> np.ndarray:
    i, f, z, o = np.split(w, 4)
    return np.concatenate([i, f, o, z])


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_lstm_matches_torch(mil, direction):
    torch.manual_seed(0)
    seq, batch, n_in, hidden = 5, 3, 4, 6
    bidir = direction == "bidirectional"
    ref = torch.nn.LSTM(n_in, hidden, bidirectional=bidir)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    x = torch.randn(seq, batch, n_in)
    h0, c0 = torch.randn(2 if bidir else 1, batch, hidden), torch.randn(2 if bidir else 1, batch, hidden)
    with torch.no_grad():
        out, (hn, cn) = ref(torch.flip(x, [0]) if direction == "reverse" else x, (h0, c0))

    def weights(suffix):
        return (
            _ifzo_to_ifoz(sd["weight_ih_l0" + suffix]),
            _ifzo_to_ifoz(sd["weight_hh_l0" + suffix]),
            _ifzo_to_ifoz(sd["bias_ih_l0" + suffix] + sd["bias_hh_l0" + suffix]),
        )

    def joined(t):  # torch [D, B, H] -> MIL [B, D*H]
        return np.concatenate(list(t.numpy()), axis=-1)

    @mb.program(
        input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec((batch, hidden * (1 + bidir)))] * 1
        + [mb.TensorSpec((batch, hidden * (1 + bidir)))],
        opset_version=ct.target.iOS17,
    )
    def prog(x, h, c):
        w_ih, w_hh, b = weights("")
        extra = {}
        if bidir:
            w_ih_b, w_hh_b, b_b = weights("_reverse")
            extra = {"weight_ih_back": w_ih_b, "weight_hh_back": w_hh_b, "bias_back": b_b}
        return mb.lstm(
            x=x, initial_h=h, initial_c=c, weight_ih=w_ih, weight_hh=w_hh, bias=b,
            direction=direction, output_sequence=True, **extra,
        )  # fmt: skip

    got = _run(mil, prog, {"x": x.numpy(), "h": joined(h0), "c": joined(c0)})
    np.testing.assert_allclose(got[0], out.numpy(), atol=TOL)
    np.testing.assert_allclose(got[1], joined(hn), atol=TOL)
    np.testing.assert_allclose(got[2], joined(cn), atol=TOL)


def _np_lstm(x, w_ih, w_hh, b, peep, clip, acts):
    """The op's definition, one batch row at a time: gates i, f, o, z; peepholes on c."""
    rec, cell, out = acts
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[1], hidden))
    c = np.zeros((x.shape[1], hidden))
    seq = []
    for t in range(x.shape[0]):
        g = x[t] @ w_ih.T + h @ w_hh.T + b
        gi, gf, go, gz = np.split(g, 4, axis=-1)
        pi, pf, po = np.split(peep, 3)
        i, f = rec(gi + c * pi), rec(gf + c * pf)
        c = np.clip(f * c + i * cell(gz), -clip, clip)
        h = rec(go + c * po) * out(c)
        seq.append(h)
    return np.stack(seq), h, c


def test_lstm_peephole_clip_and_activations(mil):
    rng = np.random.default_rng(3)
    seq, batch, n_in, hidden = 6, 2, 3, 4
    w_ih = rng.uniform(-1, 1, (4 * hidden, n_in)).astype(np.float32)
    w_hh = rng.uniform(-1, 1, (4 * hidden, hidden)).astype(np.float32)
    b = rng.uniform(-1, 1, 4 * hidden).astype(np.float32)
    peep = rng.uniform(-1, 1, 3 * hidden).astype(np.float32)
    x = rng.uniform(-2, 2, (seq, batch, n_in)).astype(np.float32)
    zeros = np.zeros((batch, hidden), np.float32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape)], opset_version=ct.target.iOS17)
    def prog(x):
        return mb.lstm(
            x=x, initial_h=zeros, initial_c=zeros, weight_ih=w_ih, weight_hh=w_hh, bias=b, peephole=peep,
            recurrent_activation="hard_sigmoid", cell_activation="tanh", activation="relu",
            clip=np.float32(0.3), output_sequence=True,
        )  # fmt: skip

    def hard_sigmoid(v):
        return np.clip(0.2 * v + 0.5, 0, 1)

    want = _np_lstm(x, w_ih, w_hh, b, peep, 0.3, (hard_sigmoid, np.tanh, lambda v: np.maximum(v, 0)))
    got = _run(mil, prog, {"x": x})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=TOL)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_gru_follows_the_mil_formula(mil, direction):
    """o = act(W_o x + R_o (r * h) + b_o): the reset gate before the hidden projection."""
    rng = np.random.default_rng(4)
    seq, batch, n_in, hidden = 4, 2, 3, 5
    w_ih = rng.uniform(-1, 1, (3 * hidden, n_in)).astype(np.float32)
    w_hh = rng.uniform(-1, 1, (3 * hidden, hidden)).astype(np.float32)
    b = rng.uniform(-1, 1, 3 * hidden).astype(np.float32)
    x = rng.uniform(-1, 1, (seq, batch, n_in)).astype(np.float32)
    h0 = rng.uniform(-1, 1, (batch, hidden)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec(h0.shape)], opset_version=ct.target.iOS17)
    def prog(x, h):
        return mb.gru(
            x=x, initial_h=h, weight_ih=w_ih, weight_hh=w_hh, bias=b, direction=direction, output_sequence=True
        )

    def sigmoid(v):
        return 1 / (1 + np.exp(-v))

    (wr, wo, wz), (rr, ro, rz), (br, bo, bz) = np.split(w_ih, 3), np.split(w_hh, 3), np.split(b, 3)
    h, seq_out = h0.astype(np.float64), []
    for xt in x[::-1] if direction == "reverse" else x:  # reverse: outputs in processing order
        z = sigmoid(xt @ wz.T + h @ rz.T + bz)
        r = sigmoid(xt @ wr.T + h @ rr.T + br)
        o = np.tanh(xt @ wo.T + (r * h) @ ro.T + bo)
        h = (1 - z) * o + z * h
        seq_out.append(h)
    got = _run(mil, prog, {"x": x, "h": h0})
    np.testing.assert_allclose(got[0], np.stack(seq_out), atol=TOL)
    np.testing.assert_allclose(got[1], h, atol=TOL)


def test_gru_ios18_reset_after_matches_torch(mil):
    torch.manual_seed(5)
    seq, batch, n_in, hidden = 5, 2, 3, 4
    ref = torch.nn.GRU(n_in, hidden)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    x, h0 = torch.randn(seq, batch, n_in), torch.randn(1, batch, hidden)
    with torch.no_grad():
        out, hn = ref(x, h0)

    def rzn_to_ron(w):  # torch (r, z, n) -> MIL (r, o=n, z)
        r, z, n = np.split(w, 3)
        return np.concatenate([r, n, z])

    @mb.program(input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec((batch, hidden))], opset_version=ct.target.iOS18)
    def prog(x, h):
        return mb.gru(
            x=x, initial_h=h, weight_ih=rzn_to_ron(sd["weight_ih_l0"]), weight_hh=rzn_to_ron(sd["weight_hh_l0"]),
            input_bias=rzn_to_ron(sd["bias_ih_l0"]), bias=rzn_to_ron(sd["bias_hh_l0"]),
            reset_after=True, output_sequence=True,
        )  # fmt: skip

    got = _run(mil, prog, {"x": x.numpy(), "h": h0.numpy()[0]}, target=ct.target.iOS18)
    np.testing.assert_allclose(got[0], out.numpy(), atol=TOL)
    np.testing.assert_allclose(got[1], hn.numpy()[0], atol=TOL)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_rnn_matches_torch(mil, direction):
    torch.manual_seed(6)
    seq, batch, n_in, hidden = 6, 3, 2, 5
    ref = torch.nn.RNN(n_in, hidden, nonlinearity="relu")
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    x, h0 = torch.randn(seq, batch, n_in), torch.randn(1, batch, hidden)
    with torch.no_grad():
        out, hn = ref(torch.flip(x, [0]) if direction == "reverse" else x, h0)

    @mb.program(input_specs=[mb.TensorSpec(x.shape), mb.TensorSpec((batch, hidden))], opset_version=ct.target.iOS17)
    def prog(x, h):
        return mb.rnn(
            x=x, initial_h=h, weight_ih=sd["weight_ih_l0"], weight_hh=sd["weight_hh_l0"],
            bias=sd["bias_ih_l0"] + sd["bias_hh_l0"], direction=direction, output_sequence=False, activation="relu",
        )  # fmt: skip

    got = _run(mil, prog, {"x": x.numpy(), "h": h0.numpy()[0]})
    np.testing.assert_allclose(got[0], out.numpy()[-1:], atol=TOL)
    np.testing.assert_allclose(got[1], hn.numpy()[0], atol=TOL)


def test_fp16_lstm_rounds_its_state_each_step(mil):
    """An fp16 LSTM (iOS17) stays close to the fp32 result and its outputs are fp16 values."""
    torch.manual_seed(7)
    seq, batch, n_in, hidden = 8, 2, 4, 8
    ref = torch.nn.LSTM(n_in, hidden)
    sd = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
    x = torch.randn(seq, batch, n_in)
    with torch.no_grad():
        out, _ = ref(x)
    zeros = np.zeros((batch, hidden), np.float16)

    @mb.program(
        input_specs=[mb.TensorSpec(x.shape, dtype=ct.converters.mil.mil.types.fp16)], opset_version=ct.target.iOS17
    )
    def prog(x):
        return mb.lstm(
            x=x, initial_h=zeros, initial_c=zeros,
            weight_ih=_ifzo_to_ifoz(sd["weight_ih_l0"]).astype(np.float16),
            weight_hh=_ifzo_to_ifoz(sd["weight_hh_l0"]).astype(np.float16),
            bias=_ifzo_to_ifoz(sd["bias_ih_l0"] + sd["bias_hh_l0"]).astype(np.float16),
            output_sequence=True,
        )[0]  # fmt: skip

    (got,) = _run(mil, prog, {"x": x.numpy().astype(np.float16)})
    assert got.dtype == np.float16
    np.testing.assert_allclose(got.astype(np.float32), out.numpy(), atol=5e-3)
