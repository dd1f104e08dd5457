"""Shared fixtures: paths to the samples and a factory for small recipes in a temp folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_models"


@pytest.fixture()
def sample_copy(tmp_path: Path):
    """Copy a sample folder into tmp_path so a test can edit its recipe or data freely."""

    def copy(name: str = "digits_cnn") -> Path:
        dest = tmp_path / name
        shutil.copytree(SAMPLES / name, dest)
        return dest

    return copy


@pytest.fixture(autouse=True)
def _isolated_config(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write a development key (or decoded data) into the real user's config (or cache) folder from a test."""
    monkeypatch.setenv("MOBEX_CONFIG_DIR", str(tmp_path_factory.mktemp("config")))
    monkeypatch.setenv("MOBEX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
