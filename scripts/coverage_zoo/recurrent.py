"""Recurrent models: nn.LSTM / nn.GRU (1-3 layers, bidirectional, both layouts), cells stepped with
explicit state, a greedy seq2seq decoder, a streaming VAD and a speaker encoder."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register

ROWS = "real: scikit-learn digits, each image read as 8 time steps of 8 pixels"
STATE = "state inputs SYNTHETIC (standard normal x 0.5)"
STREAM_NEEDS = "stateful validation: [[state]] h_in->h_out pairs, sequences fed back step by step (part 4)"


class SeqClassifier(nn.Module):
    """nn.LSTM / nn.GRU over digit rows, last step (or both directions' final states) -> 10 classes."""

    def __init__(self, kind: str, layers: int, bidirectional: bool, batch_first: bool, hidden: int = 32) -> None:
        super().__init__()
        torch.manual_seed(0)
        cls = nn.LSTM if kind == "lstm" else nn.GRU
        self.batch_first = batch_first
        self.rnn = cls(8, hidden, layers, batch_first=batch_first, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(x if self.batch_first else x.transpose(0, 1))
        last = y[:, -1] if self.batch_first else y[-1]
        return self.head(last)


for kind, layers, bidir, bf in (("lstm", 1, False, True), ("lstm", 2, True, False), ("lstm", 3, False, True),
                                ("gru", 1, False, False), ("gru", 2, True, True), ("gru", 3, True, False)):  # fmt: skip
    tag = f"{kind}{layers}{'_bidir' if bidir else ''}_{'bf' if bf else 'tm'}"
    register(ZooEntry(
        name=tag, family="recurrent", factory=partial(SeqClassifier, kind, layers, bidir, bf),
        inputs=(Input("x", (1, 8, 8)),), data=data.digit_rows, task="classification", train_epochs=6,
        samples=48, data_note=ROWS,
        covers=(f"nn.{kind.upper()}", f"{layers} layer(s)", "bidirectional" if bidir else "unidirectional",
                "batch_first" if bf else "time-major"),
    ))  # fmt: skip


class LSTMCellLoop(nn.Module):
    """nn.LSTMCell stepped over the 8 digit rows with the state in and out (a streaming model's shape)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.head = nn.LSTMCell(8, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.head(h), h, c


class GRUCellStream(nn.Module):
    """One streaming step of a GRUCell: a frame and the state in, the score and the next state out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.proj, self.cell, self.head = nn.Linear(40, 32), nn.GRUCell(32, 48), nn.Linear(48, 1)

    def forward(self, frame: torch.Tensor, h_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.cell(torch.relu(self.proj(frame)), h_in)
        return torch.sigmoid(self.head(h)), h


def _cell_data(split: str, n: int) -> dict:
    out = data.digit_rows(split, n)
    out.pop("labels")
    return {**out, **data.normal(split, n, {"h": (32,), "c": (32,)})}


register(ZooEntry(
    name="lstm_cell_loop", family="recurrent", factory=LSTMCellLoop,
    inputs=(Input("x", (1, 8, 8)), Input("h", (1, 32)), Input("c", (1, 32))), data=_cell_data,
    outputs=("logits", "h_out", "c_out"), samples=24, data_note=f"{ROWS}; {STATE}",
    covers=("nn.LSTMCell in a loop", "state in and out"), needs=STREAM_NEEDS + "; class_output = logits", fast=True,
))  # fmt: skip
register(ZooEntry(
    name="gru_cell_stream", family="recurrent", factory=GRUCellStream,
    inputs=(Input("frame", (1, 40)), Input("h_in", (1, 48))),
    data=lambda split, n: {**data.features(split, n, (40,), "frame"), **data.normal(split, n, {"h_in": (48,)})},
    outputs=("speech_prob", "h_out"), samples=24, data_note="SYNTHETIC frames and state",
    covers=("nn.GRUCell one step", "state in and out", "1-element probability output"),
    needs=STREAM_NEEDS + "; 1-element output: absolute/relative error, not cosine (part 4)",
))  # fmt: skip


class GreedySeq2Seq(nn.Module):
    """A GRU encoder over int64 tokens and a GRUCell decoder unrolled N steps, the argmax fed back."""

    def __init__(self, vocab: int = 64, steps: int = 6) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.steps = steps
        self.embed = nn.Embedding(vocab, 32)
        self.encoder = nn.GRU(32, 48, batch_first=True)
        self.decoder = nn.GRUCell(32, 48)
        self.out = nn.Linear(48, vocab)

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, h = self.encoder(self.embed(input_ids))
        h = h[0]
        token = input_ids[:, :1].squeeze(1) * 0 + 1  # <bos> = 1, int64 like the ids
        tokens, logits = [], []
        for _ in range(self.steps):
            h = self.decoder(self.embed(token), h)
            step = self.out(h)
            token = step.argmax(-1)
            tokens.append(token)
            logits.append(step)
        return torch.stack(tokens, 1), torch.stack(logits, 1)


register(ZooEntry(
    name="seq2seq_greedy", family="recurrent", factory=GreedySeq2Seq,
    inputs=(Input("input_ids", (1, 12), "int64"),),
    data=lambda split, n: data.text_ids(split, n, 12, 64, with_mask=False),
    outputs=("tokens", "logits"), samples=24,
    data_note="real text: byte ids of scikit-learn's dataset descriptions (mod 64)",
    covers=("greedy decoder unrolled 6 steps", "argmax fed back", "int64 token ids in and out", "nn.GRU encoder"),
    needs="int64 ids downcast to int32 on Android: say so in the manifest, check the id range (part 6); "
          "token outputs: exact-match rate, not cosine (part 4)",
))  # fmt: skip


class StreamingVAD(nn.Module):
    """Issue 13's VAD: STFT as conv1d over a 512-sample chunk, a small CNN, an LSTMCell carrying state."""

    def __init__(self) -> None:
        super().__init__()
        from coverage_zoo.audio import stft_conv

        torch.manual_seed(0)
        self.stft = stft_conv(n_fft=128, hop=64)
        self.cnn = nn.Sequential(nn.Conv1d(65, 32, 3, padding=1), nn.ReLU(), nn.Conv1d(32, 32, 3, padding=1), nn.ReLU())
        self.cell, self.head = nn.LSTMCell(32, 32), nn.Linear(32, 1)

    def forward(self, audio: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        spec = torch.log1p(self.stft(audio[:, None]))  # [1, 65, frames]
        feat = self.cnn(spec).mean(-1)
        h, c = self.cell(feat, (h, c))
        return torch.sigmoid(self.head(h)), h, c


register(ZooEntry(
    name="vad_stream", family="recurrent", factory=StreamingVAD,
    inputs=(Input("audio", (1, 512)), Input("h", (1, 32)), Input("c", (1, 32))),
    data=lambda split, n: {**data.audio(split, n, 512), **data.normal(split, n, {"h": (32,), "c": (32,)})},
    outputs=("speech_prob", "h_out", "c_out"), samples=16, data_note="SYNTHETIC audio and state",
    covers=("STFT as conv1d", "CNN", "nn.LSTMCell with state", "streaming"),
    needs=STREAM_NEEDS + "; 1-element probability: absolute error (part 4); int8 must stay out unless faster (part 5)",
))  # fmt: skip


class SpeakerEncoder(nn.Module):
    """Issue 13's speaker encoder: 3-layer nn.LSTM (hidden 256) over 160 log-mel frames, L2-normalised."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lstm, self.proj = nn.LSTM(40, 256, 3, batch_first=True), nn.Linear(256, 256)

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(mels)
        e = torch.relu(self.proj(y[:, -1]))
        return e / (e.norm(dim=1, keepdim=True) + 1e-6)


register(ZooEntry(
    name="speaker_lstm3_160", family="recurrent", factory=SpeakerEncoder,
    inputs=(Input("mels", (1, 160, 40)),), data=lambda split, n: data.features(split, n, (160, 40), "mels"),
    task="embedding", samples=6, data_note="SYNTHETIC log-mel frames",
    covers=("nn.LSTM 3 layers x 160 steps", "1.4 M parameters", "L2-normalised embedding"),
    needs="embedding task: per-sample cosine and recall@k (part 4)",
))  # fmt: skip
