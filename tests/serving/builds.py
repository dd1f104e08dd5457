"""Real `mobex build`s of small samples, made once per test session and shared by tests/serving and tests/monitor.

- digits: digits_cnn, Android only, fp32 + dynamic-int8 (the int8 one ships), batch 1, preprocessing range [0, 1];
- tabular5: tabular_mlp with a batch axis of 5 (for dynamic batching), Android fp32 only.
The cache is this module's, so the two test folders' fixtures build each sample once between them.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SAMPLES

_CACHE: dict[str, Built] = {}


@dataclass(frozen=True)
class Built:
    folder: Path
    out: Path
    private_key: Path
    public_key: Path
    report: dict
    name: str
    version: str

    @property
    def bundle(self) -> Path:
        return self.out / f"{self.name}-{self.version}-android.zip"

    @property
    def report_path(self) -> Path:
        return self.out / "report.json"

    def validation(self) -> dict[str, np.ndarray]:
        with np.load(self.folder / "data" / "val.npz") as npz:
            return {k: npz[k] for k in npz.files}


def _android_only(text: str, variants: str) -> str:
    text = re.sub(r'(\[android\]\nvariants = )\[[^\]]*\]', rf"\g<1>{variants}", text)
    start = text.find("[ios]")
    if start >= 0:
        end = text.find("\n[", start + 1)
        text = text[:start] + (text[end + 1 :] if end >= 0 else "")
    return text + "\n[latency]\nthreads = [1]\nwarmup = 3\nruns = 30\n"


def _build(factory: pytest.TempPathFactory, key: str, sample: str, edit) -> Built:  # noqa: ANN001
    if key in _CACHE:
        return _CACHE[key]
    from mobex.bundle.keys import generate_keypair
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe

    root = factory.mktemp(f"build-{key}")
    folder = root / sample
    shutil.copytree(SAMPLES / sample, folder)
    recipe_path = folder / "recipe.toml"
    recipe_path.write_text(edit(recipe_path.read_text()))
    private, public = generate_keypair(root / "keys" / "release.pem")
    out = root / "out"
    recipe = load_recipe(recipe_path)
    build(recipe, BuildOptions(out_dir=out, key=private, jobs=1, source_date_epoch=1_700_000_000))
    report = json.loads((out / "report.json").read_text())
    _CACHE[key] = Built(folder, out, private, public, report, recipe.model.name, recipe.model.version)
    return _CACHE[key]


def digits(factory: pytest.TempPathFactory) -> Built:
    return _build(factory, "digits", "digits_cnn", lambda t: _android_only(t, '["fp32", "dynamic-int8"]'))


def tabular_batch5(factory: pytest.TempPathFactory) -> Built:
    def edit(text: str) -> str:
        text = text.replace("shape = [1, 13]", "shape = [5, 13]")  # 45 validation samples: 9 batches of 5
        text = re.sub(r"^(calibration|training) = .*\n", "", text, flags=re.M)
        return _android_only(text, '["fp32"]')

    return _build(factory, "tabular5", "tabular_mlp", edit)


def tabular_pte(factory: pytest.TempPathFactory) -> Built:
    """tabular_mlp for Android as an ExecuTorch `.pte` (executorch:fp32, the only variant, ships)."""
    return _build(factory, "tabular-pte", "tabular_mlp", lambda t: _android_only(t, '["executorch:fp32"]'))
