"""Audio folders: WAV and FLAC clips decoded with soundfile (libsndfile), cut into the model's windows.

Steps (`mobex.preprocessing.AudioPreprocessing`, docs/preprocessing.md): decode to float32 in [-1, 1];
average the channels (mono); resample to `sample_rate` with scipy's polyphase filter when the file has
another rate; cut windows of `window` samples starting every `hop` samples (a clip shorter than one
window is zero-padded to one window; a partial window at the end is dropped); each window is either
the waveform or its log-mel spectrogram (`log_mel`), reshaped to one sample of the input. Every window
of a clip gets the clip's label (its class folder).
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

from mobex.datasources.base import Check, Problems, RawData, SourceRequest, pick_samples
from mobex.datasources.folders import MediaFolder, class_labels
from mobex.errors import DataError
from mobex.preprocessing import AudioPreprocessing

SUFFIXES = (".wav", ".flac")
MAX_SECONDS = 3600  # one clip longer than this is refused (a bound on what is decoded)


class AudioFolder(MediaFolder):
    """A folder of sound clips for an input described by `[preprocessing] kind = "audio"`."""

    name = "audio-folder"
    version = 1
    suffixes = SUFFIXES
    contract = AudioPreprocessing

    def decode(self, request: SourceRequest, files: list[Path]) -> RawData:
        contract = request.recipe.preprocessing
        assert isinstance(contract, AudioPreprocessing)
        if len(request.recipe.inputs) != 1:
            raise DataError(
                f"{request.label}: an audio folder feeds one input, the recipe has {len(request.recipe.inputs)}"
            )
        spec = request.recipe.inputs[0]
        labels, checks = class_labels(request, files)
        problems = Problems(request)
        windows, window_labels = [], []
        for i, path in enumerate(files):
            try:
                clip = read_clip(path, contract)
            except BadClip as exc:
                problems.add(path, str(exc))
                continue
            feats = [features(w, contract) for w in frame(clip, contract)]
            if feats[0].size != int(np.prod(spec.shape[1:])):
                problems.add(
                    path,
                    f"has {clip.shape[0] if clip.ndim == 2 else 1} channel(s): one window is "
                    f"{list(feats[0].shape)}, input {spec.name!r} takes {spec.shape[1:]} per sample",
                )
                continue
            windows += [f.reshape(spec.shape[1:]).astype(spec.dtype) for f in feats]
            window_labels += [labels[i] if labels is not None else -1] * len(feats)
        checks += problems.settle()
        if not windows:
            raise DataError(f"{request.label}: no clip could be used")
        keep = pick_samples(len(windows), request)
        checks.append(
            Check(
                f"{request.role}.decoded",
                True,
                f"{len(windows)} windows of {contract.window} samples (hop {contract.hop_samples}) at "
                f"{contract.sample_rate} Hz from {len(files) - len(problems.found)} clips ({contract.features}); "
                f"{len(keep)} kept",
            )
        )
        arrays = {spec.name: np.stack([windows[k] for k in keep])}
        kept_labels = np.array([window_labels[k] for k in keep], np.int64) if labels is not None else None
        return RawData(arrays, kept_labels, checks)


class BadClip(Exception):
    """A sound file that cannot become model input; the message says why."""


def read_clip(path: Path, contract: AudioPreprocessing) -> np.ndarray:
    """Samples (frames,) when mono, else (channels, frames), float32 at the contract's sample rate."""
    import soundfile

    try:
        info = soundfile.info(str(path))
        if info.frames > MAX_SECONDS * info.samplerate:
            raise BadClip(f"is {info.frames / info.samplerate:.0f} s long, more than {MAX_SECONDS} s")
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except BadClip:
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile reports every unreadable file as some error
        raise BadClip(f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    if data.shape[0] == 0:
        raise BadClip("has no samples")
    if contract.mono:
        samples = data.mean(axis=1)
    else:
        samples = data.T
    if rate != contract.sample_rate:
        from scipy.signal import resample_poly

        g = gcd(int(rate), contract.sample_rate)
        samples = resample_poly(samples, contract.sample_rate // g, int(rate) // g, axis=-1).astype(np.float32)
    return np.ascontiguousarray(samples, dtype=np.float32)


def frame(samples: np.ndarray, contract: AudioPreprocessing) -> list[np.ndarray]:
    """Windows of `window` samples every `hop` (last axis); a short clip is zero-padded to one window."""
    n, window, hop = samples.shape[-1], contract.window, contract.hop_samples
    if n < window:
        pad = [(0, 0)] * (samples.ndim - 1) + [(0, window - n)]
        return [np.pad(samples, pad)]
    return [samples[..., s : s + window] for s in range(0, n - window + 1, hop)]


def features(window: np.ndarray, contract: AudioPreprocessing) -> np.ndarray:
    return window if contract.features == "waveform" else log_mel(window, contract)


def mel_filterbank(contract: AudioPreprocessing) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) triangles on the HTK mel scale (2595 log10(1 + f / 700)), peak 1, no area norm."""
    top = contract.f_max if contract.f_max is not None else contract.sample_rate / 2

    def mel(f: np.ndarray) -> np.ndarray:
        return 2595.0 * np.log10(1.0 + f / 700.0)

    edges_mel = np.linspace(mel(np.array(contract.f_min)), mel(np.array(top)), contract.n_mels + 2)
    edges = 700.0 * (10.0 ** (edges_mel / 2595.0) - 1.0)
    freqs = np.arange(contract.n_fft // 2 + 1) * contract.sample_rate / contract.n_fft
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None, :] - lo) / (mid - lo)
    falling = (hi - freqs[None, :]) / (hi - mid)
    return np.maximum(0.0, np.minimum(rising, falling))


def log_mel(window: np.ndarray, contract: AudioPreprocessing) -> np.ndarray:
    """(n_mels, frames): periodic Hann frames of n_fft every mel_hop (no padding), |rfft|^2, mel, natural log."""
    if window.ndim != 1:
        raise DataError("log-mel features need mono audio: set [preprocessing].mono = true")
    n_fft, hop = contract.n_fft, contract.mel_hop
    count = contract.mel_frames()
    hann = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([window[i * hop : i * hop + n_fft] for i in range(count)]).astype(np.float64) * hann
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    return np.log(mel_filterbank(contract) @ power.T + contract.log_offset)
