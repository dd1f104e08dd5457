"""Data as app developers hold it, made by the tests: real photos, real sounds, a real table.

Photos: crops of the two pictures scikit-learn ships (`load_sample_images`: china.jpg, flower.jpg),
written as JPEG (and one PNG, one WebP) into one folder per class. Sounds: tones written as WAV/FLAC
with soundfile. Table: scikit-learn's wine data written as CSV. Nothing is downloaded.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

TINY_CNN = """
import torch


class TinyCnn(torch.nn.Module):
    def __init__(self, channels: int = 3, classes: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(channels, 16, 3, stride=2, padding=1)  # 432 weights: int8-weights compresses it
        self.head = torch.nn.Linear(16, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(image)).mean(dim=(2, 3))
        return self.head(x)


class TinyAudio(torch.nn.Module):
    def __init__(self, size: int = 800, classes: int = 2) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(size, 16)
        self.head = torch.nn.Linear(16, classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(audio.flatten(1))))


class TinyMlp(torch.nn.Module):
    def __init__(self, features: int = 13, classes: int = 3) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(features, 16)
        self.head = torch.nn.Linear(16, classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(features / 100.0)))


def build():
    torch.manual_seed(0)
    return TinyCnn()


def build_audio():
    torch.manual_seed(0)
    return TinyAudio()


def build_mlp():
    torch.manual_seed(0)
    return TinyMlp()
"""


def write_photos(folder: Path, per_class: int = 4, size: int = 96, seed: int = 0) -> Path:
    """Crops of scikit-learn's two sample photos, one class folder each; JPEG, plus a PNG and a WebP."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    data = load_sample_images()
    for path, picture in zip(data.filenames, data.images, strict=True):
        cls = folder / Path(path).stem
        cls.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            side = int(rng.integers(size, 2 * size))
            top, left = (int(rng.integers(0, picture.shape[d] - side)) for d in (0, 1))
            crop = Image.fromarray(picture[top : top + side, left : left + side + i * 7])
            suffix = {0: ".png", 1: ".webp"}.get(i, ".jpg")
            crop.save(cls / f"{cls.name}_{i}{suffix}", quality=90)
    return folder


def write_tones(folder: Path, rate: int = 8000, seconds: float = 0.5, per_class: int = 3) -> Path:
    """Sine tones: a 'low' class (200-300 Hz) and a 'high' class (2-3 kHz), stereo WAV and mono FLAC."""
    import soundfile

    t = np.arange(int(rate * seconds)) / rate
    for cls, base in (("low", 200.0), ("high", 2000.0)):
        (folder / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            tone = 0.5 * np.sin(2 * np.pi * (base + 50 * i) * t).astype(np.float32)
            if i % 2 == 0:
                soundfile.write(folder / cls / f"{cls}_{i}.wav", np.stack([tone, tone * 0.5], axis=1), rate)
            else:
                soundfile.write(folder / cls / f"{cls}_{i}.flac", tone, rate)
    return folder


def write_wine_csv(path: Path) -> tuple[Path, list[str], list[str]]:
    """scikit-learn's wine table as CSV: 13 named feature columns and a 'label' column of class names."""
    from sklearn.datasets import load_wine

    wine = load_wine()
    names = [n.replace("/", "_") for n in wine.feature_names]
    classes = [str(c) for c in wine.target_names]
    lines = [",".join([*names, "label"])]
    for row, target in zip(wine.data, wine.target, strict=True):
        lines.append(",".join([*(repr(float(v)) for v in row), classes[target]]))
    path.write_text("\n".join(lines) + "\n")
    return path, names, classes


@pytest.fixture()
def project(tmp_path: Path):
    """A folder with the tiny models and a recipe written from TOML text (dedented)."""

    def make(recipe_toml: str, labels: list[str] | None = None) -> Path:
        (tmp_path / "model.py").write_text(TINY_CNN)
        if labels is not None:
            (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
        recipe = tmp_path / "recipe.toml"
        recipe.write_text(textwrap.dedent(recipe_toml))
        return recipe

    return make


IMAGE_RECIPE = """
[model]
name = "photo-cnn"
version = "1.0.0"
source = "model:build"
task = "classification"
labels = "labels.txt"

[[inputs]]
name = "image"
shape = [1, 3, 64, 64]

[[outputs]]
name = "logits"

[preprocessing]
kind = "image"
resize = 72
crop = 64
color = "RGB"
scale = 255.0
mean = [0.485, 0.456, 0.406]
std = [0.229, 0.224, 0.225]
layout = "NCHW"

[data]
validation = "photos"

[android]
variants = ["fp32"]
"""
