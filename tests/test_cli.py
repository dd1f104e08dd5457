"""The CLI as users and CI run it: exit codes, messages, and what is (not) left in --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def mobex(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "mobex", *args], capture_output=True, text=True, timeout=600, cwd=cwd, env=env
    )


def _android_only(folder: Path, variants: str = '["fp32"]', extra: str = "") -> Path:
    recipe = folder / "recipe.toml"
    text = recipe.read_text()
    text = text[: text.index("[android]")] + f"[android]\nvariants = {variants}\n" + extra
    recipe.write_text(text)
    return recipe


def test_help_is_fast_and_lists_commands() -> None:
    done = mobex("--help")
    assert done.returncode == 0
    for command in ("build", "keygen", "verify", "inspect"):
        assert command in done.stdout


def test_recipe_error_exit_2(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("digits_cnn")
    recipe = folder / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('"int8"]', '"int9"]'))
    done = mobex("build", str(recipe), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert "[android].variants: unknown TFLite variant 'int9'" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_nan_data_refused_before_conversion(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "val.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    data["image"][5, 0, 0, 0] = np.nan
    np.savez(folder / "data" / "val.npz", **data)
    out = tmp_path / "out"
    done = mobex("build", str(_android_only(folder)), "--out", str(out))
    assert done.returncode == 2
    assert "array 'image' contains 1 NaN values (first in sample 5)" in done.stderr
    assert not out.exists() or not any(out.iterdir())


def test_failing_gate_leaves_reports_but_no_bundle(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("tabular_mlp")
    # a 3-class classifier is judged on its task metrics (a cosine of 3 logits means little): fail one of those
    recipe = _android_only(folder, '["fp32", "dynamic-int8"]', "\n[gates.all]\ntop1_agreement = 1.5\n")
    out = tmp_path / "out"
    done = mobex("build", str(recipe), "--out", str(out), "--json")
    assert done.returncode == 4, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["junit.xml", "report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "failed" and report["bundles"] == []
    assert report["failures"] == ["android: no variant passed its gates"]
    assert any("top1_agreement" in r and "must be >= 1.5" in r for r in report["rejected_variants"])
    summary = json.loads(done.stdout)
    assert summary["status"] == "failed"
    junit = (out / "junit.xml").read_text()
    assert "<failure" in junit and 'name="top1_agreement"' in junit
    assert "FAILED" in (out / "report.html").read_text()
    assert "gates failed, nothing shipped" in done.stderr


def test_build_verify_inspect_and_tamper(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("tabular_mlp")
    recipe = _android_only(folder, '["fp32"]')
    keys = tmp_path / "keys"
    keys.mkdir()
    assert mobex("keygen", "--out", str(keys / "release.pem")).returncode == 0
    assert oct((keys / "release.pem").stat().st_mode & 0o777) == "0o600"
    out = tmp_path / "out"
    done = mobex("build", str(recipe), "--out", str(out), "--key", str(keys / "release.pem"))
    assert done.returncode == 0, done.stderr
    bundle = out / "tabular-mlp-1.0.0-android.zip"
    ok = mobex("verify", str(bundle), "--key", str(keys / "release.pub.pem"), "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)["verified"] is True
    manifest = json.loads(mobex("inspect", str(bundle), "--json").stdout)
    assert manifest["name"] == "tabular-mlp" and manifest["platform"] == "android"

    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith(".tflite"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(info, data)
    bad = mobex("verify", str(tampered), "--key", str(keys / "release.pub.pem"))
    assert bad.returncode == 5
    assert "tflite" in bad.stderr

    other = tmp_path / "other"
    other.mkdir()
    mobex("keygen", "--out", str(other / "k.pem"))
    wrong = mobex("verify", str(bundle), "--key", str(other / "k.pub.pem"))
    assert wrong.returncode == 5


@pytest.mark.parametrize("bad_key", ["missing.pem", "notakey.pem"])
def test_bad_key_refused_before_work(sample_copy, tmp_path: Path, bad_key: str) -> None:
    folder = sample_copy("tabular_mlp")
    (tmp_path / "notakey.pem").write_text("hello")
    done = mobex("build", str(_android_only(folder)), "--out", str(tmp_path / "out"), "--key", str(tmp_path / bad_key))
    assert done.returncode == 2
    assert bad_key in done.stderr


def test_export_then_validate_the_exported_model(sample_copy, tmp_path: Path) -> None:
    folder = sample_copy("tabular_mlp")
    recipe = _android_only(folder, '["fp32", "dynamic-int8"]')
    out = tmp_path / "exported"
    done = mobex("export", str(recipe), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    written = [Path(p) for p in json.loads(done.stdout)["exported"]]
    assert sorted(p.name for p in written) == ["tabular-mlp-1.0.0-dynamic-int8.tflite", "tabular-mlp-1.0.0-fp32.tflite"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)  # no temp folder left
    assert oct(written[0].stat().st_mode & 0o777) == "0o644"
    checked = mobex(
        "validate",
        str(recipe),
        str(out / "tabular-mlp-1.0.0-dynamic-int8.tflite"),
        "--variant",
        "dynamic-int8",
        "--json",
    )
    assert checked.returncode == 0, checked.stderr


def test_out_that_is_a_file_is_refused_before_work(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "dist"
    not_a_folder.write_text("I am a file")
    done = mobex("build", str(ROOT / "sample_models" / "tabular_mlp" / "recipe.toml"), "--out", str(not_a_folder))
    assert done.returncode == 2
    assert "exists and is not a folder" in done.stderr
    assert not_a_folder.read_text() == "I am a file"
