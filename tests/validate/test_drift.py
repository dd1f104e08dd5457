"""Drift: PSI and KS on known distributions, and `mobex drift` on real bundles (no drift -> 0, shift -> 6)."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from mobex.cli_validate import DRIFT_EXIT_CODE, register
from mobex.errors import DataError, VerificationError
from mobex.monitor.bundle_drift import check_bundle_drift
from mobex.validate import drift, stats


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command()
    def other() -> None:  # a second command, so typer keeps `drift` as a sub-command as in mobex's app
        """Unused."""

    return app


def test_psi_known_values() -> None:
    assert drift.psi([50, 50], [50, 50]) == 0
    expected = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert drift.psi([50, 50], [25, 75]) == pytest.approx(expected)
    assert drift.psi([10, 0], [0, 10]) > 5  # disjoint: huge, finite thanks to the epsilon floor


def test_numpy_ks_agrees_with_scipy() -> None:
    rng = np.random.default_rng(0)
    for shift in (0.0, 0.3):
        a, b = rng.normal(size=200), rng.normal(shift, 1, size=300)
        d, p = drift.ks_2samp(a, b)
        d_np, p_np = drift._ks_2samp_numpy(a, b)
        assert d_np == pytest.approx(d)
        assert p_np == pytest.approx(p, rel=0.15, abs=1e-4)


def _asset(values: np.ndarray) -> dict:
    return stats.reference_statistics({"x": values}, None, None, task="other")


def test_compare_flags_a_shift_and_not_a_resample() -> None:
    rng = np.random.default_rng(1)
    reference = _asset(rng.normal(size=(500, 4)))
    same, _ = drift.compare(reference, {"x": rng.normal(size=(400, 4))}, None)
    assert not any(f.drifted for f in same)
    shifted = rng.normal(size=(400, 4))
    shifted[:, 2] += 0.8
    rows, per_test = drift.compare(reference, {"x": shifted}, None)
    assert [f.name for f in rows if f.drifted] == ["x[2]"]
    assert per_test == pytest.approx(0.01 / 4)  # Bonferroni over the four KS tests
    flagged = next(f for f in rows if f.drifted)
    assert flagged.psi > 0.2 and flagged.ks_p < 1e-6 and len(flagged.reasons) == 2


def test_values_near_the_rounding_grid_compare_on_the_same_grid() -> None:
    """A confident classifier's top-1 scores sit within 1e-7 of 1.0; the asset stores them rounded to 6
    digits (1.0). The same scores as new data must tie with them, not all fall just below and drift."""
    rng = np.random.default_rng(2)
    confident = 1 - 10 ** rng.uniform(-9, -2, size=(360, 1))  # half of them round to exactly 1.0
    reference = _asset(confident)
    assert np.mean(np.asarray(reference["features"][0]["sample"]) == 1.0) > 0.3
    rows, _ = drift.compare(reference, {"x": confident[rng.choice(360, 240, replace=False)]}, None)
    assert not any(f.drifted for f in rows), [(f.name, f.reasons) for f in rows]
    assert rows[0].ks_statistic < 0.1
    lowered = drift.compare(reference, {"x": confident - 0.01}, None)[0]  # a real shift still shows
    assert lowered[0].drifted


def _val_images(built) -> np.ndarray:  # noqa: ANN001
    with np.load(built.folder / "data" / "val.npz") as npz:
        return npz["image"]


@pytest.mark.parametrize("platform", ["android", "ios"])
def test_no_drift_on_validation_data_and_drift_on_shifted_data(built_digits, app, tmp_path: Path, platform) -> None:
    images = _val_images(built_digits)
    rng = np.random.default_rng(7)
    subset = tmp_path / "subset.npz"
    np.savez(subset, image=images[rng.choice(len(images), 240, replace=False)])
    ok = CliRunner().invoke(app, ["drift", str(built_digits.bundle(platform)), str(subset), "--key",
                                  str(built_digits.public_key)])  # fmt: skip
    assert ok.exit_code == 0, ok.output
    assert "signature verified" in ok.output and "no drift" in ok.output
    backend = "litert" if platform == "android" else "mil-reference"
    assert f"outputs computed by the bundle's model ({backend}) on 240 samples" in ok.output

    shifted = tmp_path / "shifted.npz"
    np.savez(shifted, image=np.clip(images * 0.6 + 0.3, 0, 1).astype(np.float32))  # washed-out, low-contrast digits
    bad = CliRunner().invoke(app, ["drift", str(built_digits.bundle(platform)), str(shifted), "--json"])
    assert bad.exit_code == DRIFT_EXIT_CODE == 6, bad.output
    result = json.loads(bad.output)
    assert result["drifted"] and not result["verified"] and "NOT verified" in result["verification"]
    assert "image.mean[c0]" in result["drifted_features"] and "logits.top1_score" in result["drifted_features"]
    assert result["exit_code"] == 6


def test_the_console_command_exits_6_on_drift_and_0_without(built_digits, tmp_path: Path) -> None:
    """As CI runs it (a real process, not CliRunner): the exit code is what scripts branch on."""
    import os
    import subprocess
    import sys

    images = _val_images(built_digits)
    same, shifted = tmp_path / "same.npz", tmp_path / "shifted.npz"
    np.savez(same, image=images)
    np.savez(shifted, image=np.clip(images * 0.6 + 0.3, 0, 1).astype(np.float32))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    codes = {}
    for name, data in (("same", same), ("shifted", shifted)):
        done = subprocess.run(
            [sys.executable, "-m", "mobex", "drift", str(built_digits.bundle("android")), str(data), "--inputs-only"],
            capture_output=True, text=True, timeout=300, env=env,
        )  # fmt: skip
        codes[name] = done.returncode
        assert "Traceback" not in done.stderr, done.stderr
    assert codes == {"same": 0, "shifted": DRIFT_EXIT_CODE}


def test_the_asset_is_in_the_signed_manifest(built_digits) -> None:
    with zipfile.ZipFile(built_digits.bundle("android")) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        asset = json.loads(zf.read(drift.REFERENCE_STATS_ASSET))
    assert manifest["model"]["reference_stats_file"] == drift.REFERENCE_STATS_ASSET
    assert drift.REFERENCE_STATS_ASSET in {f["path"] for f in manifest["files"]}
    assert asset["schema"] == stats.STATS_SCHEMA and asset["samples"] == 360
    roles = {f["role"] for f in asset["features"]}
    assert roles == {"input", "output"}


def test_tampered_bundle_is_refused_with_a_key(built_digits, app, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(built_digits.bundle("android")) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == drift.REFERENCE_STATS_ASSET:  # widen the reference so drift would go unnoticed
                data = data.replace(b'"kind":"numeric"', b'"kind":"numeric" ')
            dst.writestr(info, data)
    data = tmp_path / "d.npz"
    np.savez(data, image=_val_images(built_digits)[:50])
    result = CliRunner().invoke(app, ["drift", str(tampered), str(data), "--key", str(built_digits.public_key)])
    assert isinstance(result.exception, VerificationError)


def test_data_that_does_not_fit_the_model(built_digits, tmp_path: Path) -> None:
    wrong_name = tmp_path / "a.npz"
    np.savez(wrong_name, pixels=np.zeros((10, 1, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"no array named 'image' \(found: pixels\)"):
        check_bundle_drift(built_digits.bundle("ios"), wrong_name)
    wrong_shape = tmp_path / "b.npz"
    np.savez(wrong_shape, image=np.zeros((10, 8, 8), np.float32))
    with pytest.raises(DataError, match=r"shape \[10, 8, 8\], expected \[N, 1, 8, 8\]"):
        check_bundle_drift(built_digits.bundle("ios"), wrong_shape)
