"""Fleet builds on the local process pool: per-recipe folders, one summary, one JUnit file, the worst exit code."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from mobex.errors import UsageError
from mobex.fleet.junit import combined_junit
from mobex.fleet.run import FleetOptions, RecipeOutcome, build_fleet, worst_exit_code
from mobex.validate.report import render_junit
from tests.sample_recipes import reduced_sample

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("codes", "worst"), [([], 0), ([0, 0], 0), ([0, 4], 4), ([4, 3, 0], 3), ([4, 2, 3], 2), ([2, 1], 1), ([1, 5, 4], 5)]
)
def test_the_worst_exit_code_wins(codes: list[int], worst: int) -> None:
    assert worst_exit_code(codes) == worst


def test_an_unknown_exit_code_counts_as_an_unexpected_error() -> None:
    assert worst_exit_code([4, 7]) == 1


def _report(name: str, passed: bool) -> dict:
    gate = {"metric": "top1_agreement", "value": 0.9, "limit": 0.98, "passed": passed, "message": "top1"}
    variant = {"platform": "android", "quantization": "int8", "status": "validated", "gates": [gate]}
    return {"recipe": {"name": name, "version": "1.0.0"}, "variants": [variant]}


def test_combined_junit_names_each_recipe_and_reports_builds_that_wrote_no_report(tmp_path: Path) -> None:
    for name, passed in (("good", True), ("worse", False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "junit.xml").write_bytes(render_junit(_report(name, passed)))
    outcomes = [
        RecipeOutcome("a.toml", "good", str(tmp_path / "good"), 0, "passed"),
        RecipeOutcome("b.toml", "worse", str(tmp_path / "worse"), 4, "failed", "gates failed"),
        RecipeOutcome("c.toml", "broken", str(tmp_path / "broken"), 2, "error", "[data].validation: NaN\n  hint: x"),
    ]
    root = ET.fromstring(combined_junit(outcomes))
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("3", "1", "1")
    suites = {s.get("name"): s for s in root.findall("testsuite")}
    assert sorted(suites) == ["broken.build", "good.android", "worse.android"]
    assert suites["good.android"].find("testcase").get("classname") == "good.mobex.android.int8"
    assert suites["worse.android"].find("testcase/failure") is not None
    error = suites["broken.build"].find("testcase/error")
    assert error.get("message") == "[data].validation: NaN" and error.get("type") == "exit 2"


def _two_recipes(tmp_path: Path) -> tuple[Path, Path]:
    good = reduced_sample("tabular_mlp", tmp_path, android=["fp32"], ios=["fp16"])
    bad = tmp_path / "broken"
    shutil.copytree(good.parent, bad)
    (bad / "recipe.toml").write_text(good.read_text().replace('name = "tabular-mlp"', 'name = "broken-mlp"'))
    val = dict(np.load(good.parent / "data" / "val.npz"))
    val["features"][3, 2] = np.nan
    np.savez(bad / "data" / "val.npz", **val)
    return good, bad / "recipe.toml"


def test_recipes_with_one_model_name_are_refused_before_any_build(tmp_path: Path, sample_copy) -> None:  # noqa: ANN001
    one = sample_copy("tabular_mlp") / "recipe.toml"
    other = tmp_path / "again.toml"
    other.write_text(one.read_text())
    with pytest.raises(UsageError, match="several recipes build a model named tabular-mlp"):
        build_fleet([one, other], FleetOptions(out_dir=tmp_path / "out"))
    assert not (tmp_path / "out" / "tabular-mlp").exists()


@pytest.mark.slow
def test_fleet_build_on_the_process_pool(tmp_path: Path) -> None:
    good, bad = _two_recipes(tmp_path)
    ws = tmp_path / "fleet.toml"
    ws.write_text(f'[workspace]\nrecipes = ["{good.relative_to(tmp_path)}", "{bad.relative_to(tmp_path)}"]\n')
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "mobex", "build", str(ws), "--out", str(out), "--workers", "2", "--json"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr  # the broken recipe's bad data (2) is worse than a pass
    summary = json.loads(done.stdout)
    assert summary == json.loads((out / "fleet.json").read_text())
    by_name = {r["name"]: r for r in summary["recipes"]}
    assert by_name["tabular-mlp"]["status"] == "passed" and by_name["tabular-mlp"]["exit_code"] == 0
    assert sorted(by_name["tabular-mlp"]["bundles"]) == ["tabular-mlp-1.0.0-android.zip", "tabular-mlp-1.0.0-ios.zip"]
    assert by_name["broken-mlp"]["exit_code"] == 2 and "NaN" in by_name["broken-mlp"]["message"]
    assert (out / "tabular-mlp" / "tabular-mlp-1.0.0-android.zip").is_file()
    assert (out / "tabular-mlp" / "report.json").is_file() and (out / "logs" / "tabular-mlp.log").is_file()
    assert not (out / "broken-mlp").exists() or not list((out / "broken-mlp").glob("*.zip"))
    root = ET.fromstring((out / "junit.xml").read_bytes())
    names = sorted(s.get("name") for s in root.findall("testsuite"))
    assert names == ["broken-mlp.build", "tabular-mlp.android", "tabular-mlp.ios"]
    assert root.get("errors") == "1" and root.get("failures") == "0"
