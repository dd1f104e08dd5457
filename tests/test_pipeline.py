"""End to end: every sample builds both bundles, and they verify, with mobex and with model_signing itself."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mobex.bundle.keys import generate_keypair
from mobex.bundle.verify import verify_bundle
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from tests.conftest import SAMPLES

SAMPLE_NAMES = ["digits_cnn", "digits_vit", "tabular_mlp"]


@pytest.fixture(scope="module")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "release.pem")


@pytest.fixture(scope="module", params=SAMPLE_NAMES)
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, release_key):
    """One full build per sample (both platforms, parallel export processes), shared by the tests below."""
    out = tmp_path_factory.mktemp(f"dist-{request.param}")
    recipe = load_recipe(SAMPLES / request.param / "recipe.toml")
    result = build(recipe, BuildOptions(out_dir=out, key=release_key[0], jobs=2, source_date_epoch=1_700_000_000))
    return request.param, recipe, result, out


def test_both_bundles_and_three_reports(built) -> None:
    _, recipe, result, out = built
    assert result.passed
    names = sorted(p.name for p in out.iterdir())
    stem = f"{recipe.model.name}-{recipe.model.version}"
    assert names == sorted([f"{stem}-android.zip", f"{stem}-ios.zip", "junit.xml", "report.html", "report.json"])
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "passed"
    assert set(report["shipped"]) == {"android", "ios"}
    for v in report["variants"]:
        for key in (
            "target",
            "platform",
            "quantization",
            "size_bytes",
            "backend",
            "parity",
            "latency",
            "gates",
            "shipped",
        ):
            assert key in v
    assert {"data checks", "reference run", "export", "export tflite", "export coreml", "validate", "total"} <= set(
        report["timings"]
    )


def test_every_variant_validated_with_the_right_backend(built) -> None:
    _, recipe, result, _ = built
    for v in result.report["variants"]:
        assert v["status"] == "validated", (v["id"], v["status"])
        assert v["backend"] == ("litert" if v["platform"] == "android" else "mil-reference")
        assert v["parity"]["samples"] > 0
        if v["platform"] == "android":
            assert v["latency"]["p50_ms"] > 0 and v["latency"]["threads"] == 1
        else:
            assert v["latency"] is None  # the interpreter is not the Core ML runtime: no invented latency


def test_fp32_parity_is_tight(built) -> None:
    _, _, result, _ = built
    by_id = {v["id"]: v for v in result.report["variants"]}
    assert by_id["android/fp32"]["parity"]["max_abs_error"] < 1e-4
    assert by_id["ios/fp32"]["parity"]["max_abs_error"] < 1e-4
    assert by_id["android/fp32"]["parity"]["top1_agreement"] == 1.0


def test_bundles_verify_with_mobex_and_model_signing(built, release_key, tmp_path: Path) -> None:
    _, recipe, result, _ = built
    for bundle in result.bundles:
        manifest = verify_bundle(bundle, release_key[1])
        assert (manifest.name, manifest.version) == (recipe.model.name, recipe.model.version)
        assert manifest.labels == recipe.labels()
        assert manifest.provenance["recipe_sha256"] == recipe.sha256
        extracted = tmp_path / bundle.stem
        with zipfile.ZipFile(bundle) as zf:
            zf.extractall(extracted)
        cli = [sys.executable, "-m", "model_signing", "verify", "key", str(extracted)]
        cli += ["--signature", str(extracted / "signature.sigstore.json"), "--public_key", str(release_key[1])]
        done = subprocess.run(cli, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr


def test_manifest_io_contract(built, release_key) -> None:
    _, recipe, result, _ = built
    for bundle in result.bundles:
        manifest = verify_bundle(bundle, release_key[1])
        assert [t["name"] for t in manifest.model["inputs"]] == [i.name for i in recipe.inputs]
        # Same output names on both platforms: the samples take tensors, not pictures, so no Core ML classifier.
        assert manifest.model["outputs"][0]["name"] == recipe.outputs[0].name
        assert manifest.model["quantization"] == result.report["shipped"][manifest.platform]
        assert manifest.metrics["parity"]["top1_agreement"] >= 0.97
