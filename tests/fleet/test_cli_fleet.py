"""`mobex build` with several recipes or a workspace file: argument errors exit 2 before anything builds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import SAMPLES

ROOT = Path(__file__).resolve().parents[2]


def _mobex(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "mobex", *args], capture_output=True, text=True, env=env, timeout=120)


def test_an_unknown_executor_is_refused(tmp_path: Path) -> None:
    recipes = [str(SAMPLES / n / "recipe.toml") for n in ("tabular_mlp", "digits_cnn")]
    done = _mobex("build", *recipes, "--executor", "spark", "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "--executor 'spark' is not one of local, ray" in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_recipe_is_refused(tmp_path: Path) -> None:
    done = _mobex("build", str(SAMPLES / "tabular_mlp" / "recipe.toml"), str(tmp_path / "nope.toml"))
    assert done.returncode == 2 and "no such recipe or workspace file" in done.stderr


def test_a_workspace_entry_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "fleet.toml"
    ws.write_text('[workspace]\nrecipes = ["models/*/recipe.toml"]\n')
    done = _mobex("build", str(ws), "--out", str(tmp_path / "out"))
    assert done.returncode == 2 and "matches no file" in done.stderr
