"""Text models: embeddings over int64 ids, attention masks (int and bool), RNN encoders, a char-CNN and
torch's own TransformerEncoder. Random-init, judged on byte ids of real English text that scikit-learn
ships (its datasets' descriptions)."""

from __future__ import annotations

import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register

TEXT = "real text: byte ids of scikit-learn's dataset descriptions"
IDS_NEEDS = "int64 ids downcast to int32 on Android: manifest note + id-range check on the data (part 6)"
SEQ, VOCAB = 24, 128


class MaskedMeanPool(nn.Module):
    """Embedding, mean over the unmasked positions, MLP head: the simplest sentence classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.head = nn.Embedding(VOCAB, 32), nn.Sequential(nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        m = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * m).sum(1) / m.sum(1).clamp(min=1.0)
        return self.head(pooled)


class BiGRUEncoder(nn.Module):
    """Embedding + bidirectional GRU encoder; padded positions zeroed; returns per-token states."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.rnn = nn.Embedding(VOCAB, 32), nn.GRU(32, 32, batch_first=True, bidirectional=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        y, _ = self.rnn(self.embed(input_ids))
        return y * attention_mask.unsqueeze(-1).to(y.dtype)


class CharCNN(nn.Module):
    """Character CNN: embedding, Conv1d of widths 3/5, max over time, classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 24)
        self.convs = nn.ModuleList([nn.Conv1d(24, 32, k, padding=k // 2) for k in (3, 5)])
        self.head = nn.Linear(64, 6)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids).transpose(1, 2)
        return self.head(torch.cat([torch.relu(c(x)).amax(-1) for c in self.convs], 1))


class TorchTransformer(nn.Module):
    """torch.nn.TransformerEncoder (2 layers, batch_first) with a bool key-padding mask and learned positions."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.pos = nn.Embedding(VOCAB, 32), nn.Parameter(torch.randn(1, SEQ, 32) * 0.1)
        layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embed(input_ids) + self.pos, src_key_padding_mask=~attention_mask)


class LSTMTagger(nn.Module):
    """Embedding + 2-layer LSTM + per-token tag scores (a G2P / tagging shape)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.rnn = nn.Embedding(VOCAB, 32), nn.LSTM(32, 48, 2, batch_first=True)
        self.tags = nn.Linear(48, 40)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.tags(self.rnn(self.embed(input_ids))[0])


def _ids(mask: bool = True, bool_mask: bool = False) -> tuple[Input, ...]:
    ids = (Input("input_ids", (1, SEQ), "int64"),)
    return ids + ((Input("attention_mask", (1, SEQ), "bool" if bool_mask else "int64"),) if mask else ())


def _entry(name: str, factory, mask: bool, covers: tuple, bool_mask: bool = False, needs: str = "",  # noqa: ANN001
           fast: bool = False) -> None:  # fmt: skip
    register(ZooEntry(
        name=name, family="text", factory=factory, inputs=_ids(mask, bool_mask),
        data=lambda split, n: data.text_ids(split, n, SEQ, VOCAB, with_mask=mask, bool_mask=bool_mask),
        samples=16, data_note=TEXT, covers=covers, needs="; ".join(x for x in (IDS_NEEDS, needs) if x), fast=fast,
    ))  # fmt: skip


_entry("text_masked_mean", MaskedMeanPool, True, ("nn.Embedding", "int64 ids", "int attention mask", "masked mean"),
       needs="classification without labels: top-1 agreement")  # fmt: skip
_entry("text_bigru_encoder", BiGRUEncoder, True, ("nn.Embedding", "bidirectional nn.GRU encoder", "mask multiply"))
_entry("text_char_cnn", CharCNN, False, ("nn.Embedding", "Conv1d widths 3/5", "amax over time"))
_entry("text_torch_transformer", TorchTransformer, True,
       ("nn.TransformerEncoder", "bool key-padding mask", "nn.MultiheadAttention"), bool_mask=True,
       needs="bool input: must work on both targets (part 6)")  # fmt: skip
_entry("text_lstm_tagger", LSTMTagger, False, ("nn.Embedding", "2-layer nn.LSTM", "per-token scores"))
