"""One small real build shared by the validator, report and drift tests (digits CNN, two variants per platform)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import SAMPLES


@dataclass
class Built:
    folder: Path  # the copied sample (recipe + data)
    out: Path  # bundles and reports
    private_key: Path
    public_key: Path
    report: dict

    def bundle(self, platform: str) -> Path:
        return self.out / f"digits-cnn-1.0.0-{platform}.zip"


@pytest.fixture(scope="session")
def built_digits(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """digits_cnn with android fp32 + dynamic-int8 and ios fp32 + fp16, latency at 1 and 2 threads."""
    import json

    from mobex.bundle.keys import generate_keypair
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe

    root = tmp_path_factory.mktemp("digits-build")
    folder = root / "digits_cnn"
    shutil.copytree(SAMPLES / "digits_cnn", folder)
    recipe_path = folder / "recipe.toml"
    text = recipe_path.read_text()
    text = text.replace('variants = ["fp32", "fp16", "dynamic-int8", "int8"]', 'variants = ["fp32", "dynamic-int8"]')
    text = text.replace('variants = ["fp32", "fp16", "int8-weights"]', 'variants = ["fp32", "fp16"]')
    text += "\n[latency]\nthreads = [1, 2]\nwarmup = 2\nruns = 10\n"
    recipe_path.write_text(text)
    private, public = generate_keypair(root / "keys" / "release.pem")
    out = root / "out"
    build(load_recipe(recipe_path), BuildOptions(out_dir=out, key=private, jobs=2, source_date_epoch=1_700_000_000))
    return Built(folder, out, private, public, json.loads((out / "report.json").read_text()))
