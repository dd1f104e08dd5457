"""Hostile inputs, crafted at run time: helpers to run the real `mobex` CLI and to make small bundles and recipes.

Nothing here is a committed blob: every crafted file is written by the test that uses it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.bundle.conftest import keypair, make_manifest, make_staging, rewrite_zip  # noqa: F401 - fixtures
from tests.conftest import ROOT


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def run_mobex(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 600) -> Run:
    """`python -m mobex ARGS` as a real process (the exit code and stderr are what users and CI see)."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "mobex", *args], capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd
    )
    return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def mobex_cli() -> Callable[..., Run]:
    return run_mobex


@pytest.fixture
def signed_bundle(tmp_path: Path, make_staging, make_manifest, keypair) -> Callable[..., Path]:  # noqa: F811
    """A real signed bundle (small fake model) for archive and JSON tests."""
    from mobex.bundle.verify import build_bundle

    def make(platform: str = "android", **manifest_fields) -> Path:
        staging = make_staging(tmp_path / f"staging-{platform}", platform)
        manifest = make_manifest(platform, **manifest_fields)
        return build_bundle(staging, manifest, tmp_path / manifest.bundle_filename(), keypair[0], source_date_epoch=0)

    return make


def tabular_recipe(folder: Path, *, android: list[str] | None = None, ios: list[str] | None = None) -> Path:
    """Cut the tabular sample's recipe (copied to `folder`) down to the given cheap variants."""
    recipe = folder / "recipe.toml"
    text = recipe.read_text()
    text = text[: text.index("[android]")]
    if android:
        text += "[android]\nvariants = [" + ", ".join(f'"{v}"' for v in android) + "]\n"
    if ios:
        text += "[ios]\nvariants = [" + ", ".join(f'"{v}"' for v in ios) + ']\nminimum_deployment_target = "iOS16"\n'
    text += "\n[latency]\nthreads = [1]\nwarmup = 1\nruns = 3\n"
    recipe.write_text(text)
    return recipe
