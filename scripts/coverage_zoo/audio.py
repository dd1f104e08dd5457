"""Audio front-ends and 1-D conv stacks: STFT as conv1d, log-mel, reflect padding, unfold framing,
a pitch CNN and a keyword spotter. All on SYNTHETIC audio: no recordings ship in the installed packages."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from coverage_zoo import Input, ZooEntry, data, register

SYNTH = "SYNTHETIC audio: chirps, harmonic tones, noise bursts (16 kHz)"


def _dft_kernels(n_fft: int) -> tuple[np.ndarray, np.ndarray]:
    """Hann-windowed cosine and sine bases, [n_fft // 2 + 1, n_fft]."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    return (np.cos(2 * np.pi * k * n / n_fft) * window).astype(np.float32), (
        -np.sin(2 * np.pi * k * n / n_fft) * window
    ).astype(np.float32)


class STFTConv(nn.Module):
    """|STFT|^2 with fixed conv1d kernels (the usual mobile trick: no complex ops on device)."""

    def __init__(self, n_fft: int, hop: int) -> None:
        super().__init__()
        cos, sin = _dft_kernels(n_fft)
        self.conv = nn.Conv1d(1, 2 * len(cos), n_fft, stride=hop, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.from_numpy(np.concatenate([cos, sin])[:, None]))
        self.bins = len(cos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 1, samples] -> [B, bins, frames]
        y = self.conv(x)
        return y[:, : self.bins] ** 2 + y[:, self.bins :] ** 2


def stft_conv(n_fft: int, hop: int) -> STFTConv:
    return STFTConv(n_fft, hop)


def mel_matrix(bins: int, mels: int, sample_rate: int = 16000) -> torch.Tensor:
    """A triangular mel filterbank [mels, bins] (HTK formula)."""
    def hz_to_mel(f: np.ndarray) -> np.ndarray:
        return 2595 * np.log10(1 + f / 700)

    points = 700 * (10 ** (np.linspace(hz_to_mel(0), hz_to_mel(sample_rate / 2), mels + 2) / 2595) - 1)
    freqs = np.linspace(0, sample_rate / 2, bins)
    bank = np.zeros((mels, bins), np.float32)
    for m in range(mels):
        lo, mid, hi = points[m : m + 3]
        bank[m] = np.clip(np.minimum((freqs - lo) / (mid - lo), (hi - freqs) / (hi - mid)), 0, None)
    return torch.from_numpy(bank)


class LogMelKWS(nn.Module):
    """Reflect-padded STFT-conv, log-mel, then a 2-D CNN keyword classifier (12 keywords)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stft = STFTConv(256, 128)
        self.register_buffer("mel", mel_matrix(129, 32))
        self.cnn = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(32, 12)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(audio[:, None], (128, 128), mode="reflect")
        logmel = torch.log(torch.matmul(self.mel, self.stft(x)) + 1e-6)  # [B, 32, frames]
        return self.head(self.cnn(logmel[:, None]).flatten(1))


class UnfoldLogMel(nn.Module):
    """Framing by Tensor.unfold, a window, a DFT by matmul, log-mel, a 1-D conv stack -> embedding."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        cos, sin = _dft_kernels(200)
        self.register_buffer("cos", torch.from_numpy(cos.T.copy()))
        self.register_buffer("sin", torch.from_numpy(sin.T.copy()))
        self.register_buffer("mel", mel_matrix(101, 24).T.contiguous())
        self.convs = nn.Sequential(nn.Conv1d(24, 32, 5, padding=2), nn.GELU(),
                                   nn.Conv1d(32, 32, 5, padding=4, dilation=2), nn.GELU())  # fmt: skip

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = nn.functional.pad(audio[:, None], (100, 100), mode="reflect")[:, 0]
        frames = x.unfold(-1, 200, 80)  # [B, frames, 200]
        power = (frames @ self.cos) ** 2 + (frames @ self.sin) ** 2
        logmel = torch.log(power @ self.mel + 1e-6).transpose(1, 2)
        return self.convs(logmel).mean(-1)


class PitchCNN(nn.Module):
    """CREPE-style pitch estimator: 1-D conv stack on 1024 raw samples -> 360 pitch bins (~0.5 M params)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        layers: list[nn.Module] = [nn.Conv1d(1, 128, 512, stride=4, padding=254), nn.ReLU(), nn.BatchNorm1d(128),
                                   nn.MaxPool1d(2)]  # fmt: skip
        for cin, cout in ((128, 16), (16, 16), (16, 32), (32, 64)):
            layers += [nn.Conv1d(cin, cout, 64, padding="same"), nn.ReLU(), nn.BatchNorm1d(cout), nn.MaxPool1d(2)]
        self.convs = nn.Sequential(*layers)
        self.head = nn.Linear(64 * 8, 360)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.convs(audio[:, None]).flatten(1)))


class DSCNNKeywords(nn.Module):
    """Depthwise-separable 1-D conv keyword spotter over 49 frames of 10 MFCC-like features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        blocks = [nn.Conv1d(10, 64, 5, padding=2), nn.BatchNorm1d(64), nn.ReLU()]
        for _ in range(3):
            blocks += [nn.Conv1d(64, 64, 3, padding=1, groups=64), nn.BatchNorm1d(64), nn.ReLU(),
                       nn.Conv1d(64, 64, 1), nn.BatchNorm1d(64), nn.ReLU()]  # fmt: skip
        self.body, self.head = nn.Sequential(*blocks), nn.Linear(64, 12)

    def forward(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(mfcc.transpose(1, 2)).mean(-1))


def randomise_norms(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics (random-init nets would otherwise normalise nothing)."""
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.uniform_(-0.2, 0.2, generator=gen)
    return model.eval()


def _kws() -> nn.Module:
    return randomise_norms(LogMelKWS())


def _pitch() -> nn.Module:
    return randomise_norms(PitchCNN())


def _dscnn() -> nn.Module:
    return randomise_norms(DSCNNKeywords())


register(ZooEntry(
    name="logmel_kws", family="audio", factory=_kws, inputs=(Input("audio", (1, 4000)),),
    data=lambda split, n: data.audio(split, n, 4000), samples=12, data_note=SYNTH,
    covers=("reflect padding", "STFT as conv1d", "log-mel matmul", "2-D CNN", "BatchNorm", "MaxPool"),
    needs="classification without labels: top-1 agreement with the original (no labels exist)",
))  # fmt: skip
register(ZooEntry(
    name="unfold_logmel_embed", family="audio", factory=UnfoldLogMel, inputs=(Input("audio", (1, 3200)),),
    data=lambda split, n: data.audio(split, n, 3200), task="embedding", samples=12, data_note=SYNTH,
    covers=("unfold framing", "reflect padding", "DFT by matmul", "log-mel", "dilated Conv1d", "GELU"),
    needs="embedding task: per-sample cosine and recall@k (part 4)",
))  # fmt: skip
register(ZooEntry(
    name="pitch_cnn", family="audio", factory=_pitch, inputs=(Input("audio", (1, 1024)),),
    data=lambda split, n: data.audio(split, n, 1024), samples=12, data_note=SYNTH,
    covers=("1-D conv stack", "kernel 512 stride 4", "BatchNorm1d", "MaxPool1d", "sigmoid bins"),
    needs="pitch: argmax-bin agreement and cents error would be the task metric (not in parts 4-6)",
))  # fmt: skip
register(ZooEntry(
    name="dscnn_kws", family="audio", factory=_dscnn, inputs=(Input("mfcc", (1, 49, 10)),),
    data=lambda split, n: data.features(split, n, (49, 10), "mfcc"), samples=16,
    data_note="SYNTHETIC MFCC-like frames", covers=("depthwise Conv1d", "pointwise Conv1d", "BatchNorm1d"),
    needs="classification without labels: top-1 agreement",
))  # fmt: skip

