"""Audio folders: soundfile decoding, mono mixdown, resampling, windows, log-mel, bad clips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mobex.data import load_dataset
from mobex.datasources.audio import log_mel
from mobex.errors import DataError
from mobex.preprocessing import parse_preprocessing
from mobex.recipe import load_recipe
from tests.datasources.conftest import write_tones

AUDIO_RECIPE = """
[model]
name = "tones"
version = "1.0.0"
source = "model:build_audio"
task = "classification"
labels = "labels.txt"

[[inputs]]
name = "audio"
shape = [1, 800]

[preprocessing]
kind = "audio"
sample_rate = 8000
window = 800
hop = 400

[data]
validation = "tones"
min_calibration_samples = 4

[android]
variants = ["fp32"]
"""


def test_clips_become_windows_with_their_class(project, tmp_path: Path) -> None:
    write_tones(tmp_path / "tones")
    recipe = load_recipe(project(AUDIO_RECIPE, ["low", "high"]))
    data = load_dataset(recipe, "validation", recipe.data.validation)
    # 0.5 s at 8 kHz = 4000 samples: windows of 800 every 400 -> 1 + (4000 - 800) // 400 = 9 per clip, 6 clips.
    assert data.arrays["audio"].shape == (54, 800)
    assert data.labels.tolist() == [1] * 27 + [0] * 27  # "high" files sort first; labels.txt says low = 0
    # The stereo WAV (right channel at half amplitude) is mixed down: peak 0.75 * 0.5.
    assert abs(np.abs(data.arrays["audio"][27]).max() - 0.375) < 0.01


def test_other_sample_rates_are_resampled(project, tmp_path: Path) -> None:
    write_tones(tmp_path / "tones", rate=16000)
    recipe = load_recipe(project(AUDIO_RECIPE, ["low", "high"]))
    data = load_dataset(recipe, "validation", recipe.data.validation)
    assert data.arrays["audio"].shape == (54, 800)  # 8000 samples at 16 kHz -> 4000 at 8 kHz


def test_unreadable_clips_are_named(project, tmp_path: Path) -> None:
    write_tones(tmp_path / "tones")
    (tmp_path / "tones" / "low" / "noise.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    recipe = load_recipe(project(AUDIO_RECIPE, ["low", "high"]))
    with pytest.raises(DataError, match=r"1 bad files:\n  .*noise\.wav: cannot be decoded"):
        load_dataset(recipe, "validation", recipe.data.validation)


def test_log_mel_matches_an_independent_computation() -> None:
    contract = parse_preprocessing(
        {
            "kind": "audio",
            "sample_rate": 8000,
            "window": 800,
            "features": "log-mel",
            "n_fft": 256,
            "mel_hop": 128,
            "n_mels": 16,
        }
    )
    t = np.arange(800) / 8000
    wave = np.sin(2 * np.pi * 1000 * t)
    mel = log_mel(wave, contract)
    assert mel.shape == (16, 1 + (800 - 256) // 128)
    # Independently: scipy's STFT power of the same Hann frames, summed over the bins of each triangle.
    from scipy.signal import stft

    _, _, z = stft(wave, fs=8000, window="hann", nperseg=256, noverlap=128, boundary=None, padded=False, detrend=False)
    power = np.abs(z * np.hanning(256 + 1)[:-1].sum()) ** 2  # undo scipy's window-sum scaling
    hz = 2595 * np.log10(1 + np.array([0.0, 4000.0]) / 700)
    edges = 700 * (10 ** (np.linspace(hz[0], hz[1], 18) / 2595) - 1)
    freqs = np.arange(129) * 8000 / 256
    weights = np.clip(
        np.minimum(
            (freqs - edges[:-2, None]) / (edges[1:-1, None] - edges[:-2, None]),
            (edges[2:, None] - freqs) / (edges[2:, None] - edges[1:-1, None]),
        ),
        0,
        None,
    )
    np.testing.assert_allclose(mel, np.log(weights @ power + 1e-6), rtol=1e-6, atol=1e-6)
    # The 1 kHz tone is loudest in the mel band around 1 kHz.
    centre = int(np.argmin(np.abs(edges[1:-1] - 1000)))
    assert abs(int(np.argmax(mel[:, 0])) - centre) <= 1
