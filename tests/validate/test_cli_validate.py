"""`mobex validate RECIPE MODEL`: an exported model checked against the recipe without a build."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from mobex.cli_validate import register
from mobex.errors import GateFailed, UsageError


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)
    return app


def _extract(bundle: Path, dest: Path) -> Path:
    with zipfile.ZipFile(bundle) as zf:
        zf.extractall(dest)
        manifest = json.loads(zf.read("manifest.json"))
    return dest / manifest["model"]["path"]


def test_validate_shipped_models_pass_their_gates(built_digits, app, tmp_path: Path) -> None:
    recipe = str(built_digits.folder / "recipe.toml")
    tflite = _extract(built_digits.bundle("android"), tmp_path / "a")
    ok = CliRunner().invoke(app, ["validate", recipe, str(tflite), "--variant", "dynamic-int8", "--json"])
    assert ok.exit_code == 0, ok.output
    result = json.loads(ok.output)
    assert result["variant"]["backend"] == "litert" and result["variant"]["passed"]
    assert result["variant"]["latency"]["load_ms"] > 0
    shipped = next(v for v in built_digits.report["variants"] if v["id"] == "android/dynamic-int8")
    assert result["variant"]["parity"]["max_abs_error"] == pytest.approx(shipped["parity"]["max_abs_error"])

    package = _extract(built_digits.bundle("ios"), tmp_path / "i")
    ios = CliRunner().invoke(app, ["validate", recipe, str(package), "--variant", "fp16"])  # the shipped iOS variant
    assert ios.exit_code == 0, ios.output
    assert "mil-reference" in ios.output and "pass" in ios.output


def test_validate_fails_a_gate_and_refuses_other_files(built_digits, app, tmp_path: Path) -> None:
    recipe = str(built_digits.folder / "recipe.toml")
    tflite = _extract(built_digits.bundle("android"), tmp_path / "a")
    strict = CliRunner().invoke(app, ["validate", recipe, str(tflite), "--variant", "fp32"])  # int8 held to fp32 gates
    assert isinstance(strict.exception, GateFailed)
    assert "max_abs_error" in str(strict.exception)
    other = CliRunner().invoke(app, ["validate", recipe, str(built_digits.bundle("android"))])
    assert isinstance(other.exception, UsageError) and "not a .tflite file" in str(other.exception)
