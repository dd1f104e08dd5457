"""Issue 15's release flow end to end: build 1.0.0 -> publish -> build 1.1.0 gated against the registry's stable
release -> a deliberately worse 1.1.1 is refused by its [release] budget -> staged promote at 10 % -> pulls from
100 device ids split about 10/90 and stay put -> full rollout. Real builds of the wine MLP (cheap variants), a
real registry folder, real signatures; the refusal goes through the CLI for its exit code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from mobex.bundle.keys import generate_keypair
from mobex.errors import GateFailed
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from mobex.registry.publish import promote, publish
from mobex.registry.pull import pull
from tests.conftest import ROOT, SAMPLES

BUDGETS = """
[release]
max_size_growth = 0.5
max_accuracy_drop = 0.02
min_agreement_with_previous = 0.95
max_latency_regression = 3.0
"""


def _sample(folder: Path, version: str, weights_noise: float = 0.0) -> Path:
    """The wine MLP at `version` with cheap variants (and, for a worse release, noisy weights)."""
    if not folder.exists():
        shutil.copytree(SAMPLES / "tabular_mlp", folder)
    text = (SAMPLES / "tabular_mlp" / "recipe.toml").read_text()
    text = text.replace('version = "1.0.0"', f'version = "{version}"')
    text = text.replace('variants = ["fp32", "fp16", "dynamic-int8", "int8"]', 'variants = ["fp32", "dynamic-int8"]')
    text = text.replace('variants = ["fp32", "fp16", "int8-weights"]', 'variants = ["fp16"]')
    if weights_noise:
        weights = load_file(str(SAMPLES / "tabular_mlp" / "weights.safetensors"))
        rng = np.random.default_rng(0)
        for name in ("net.0.weight", "net.2.weight"):
            w = weights[name]
            weights[name] = (w + rng.normal(0, weights_noise * np.abs(w).mean(), w.shape)).astype(w.dtype)
        save_file(weights, str(folder / "noisy.safetensors"))
        text = text.replace('weights = "weights.safetensors"', 'weights = "noisy.safetensors"')
    (folder / "recipe.toml").write_text(text + BUDGETS)
    return folder / "recipe.toml"


@pytest.mark.slow
def test_release_gated_against_stable_then_rolled_out_in_stages(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "release.pem")
    reg = tmp_path / "registry"
    first = build(load_recipe(_sample(tmp_path / "v100", "1.0.0")), BuildOptions(tmp_path / "out100", key=private))
    for bundle in first.bundles:
        publish(bundle, reg, "beta", private)
    promote("tabular-mlp", reg, "beta", "stable", private)

    gated = BuildOptions(tmp_path / "out110", key=private, baselines=[str(reg)], baseline_channel="stable",
                         baseline_key=public)  # fmt: skip
    second = build(load_recipe(_sample(tmp_path / "v110", "1.1.0")), gated)
    for platform in ("android", "ios"):
        entry = second.report["baseline"][platform]
        assert entry["previous"]["version"] == "1.0.0" and entry["new"]["version"] == "1.1.0"
        assert entry["agreement"]["top1_agreement"] == 1.0  # the same model, rebuilt
        assert all(b["passed"] for b in entry["budgets"]) and len(entry["budgets"]) == 4
    assert second.report["baseline"]["android"]["latency"]["method"] == "interleaved"
    assert second.report["baseline"]["ios"]["latency"] is None  # no Core ML latency off macOS, and it says so
    assert "Previous release" in (tmp_path / "out110" / "report.html").read_text()

    worse = _sample(tmp_path / "v111", "1.1.1", weights_noise=3.0)
    done = subprocess.run(
        [sys.executable, "-m", "mobex", "build", str(worse), "--out", str(tmp_path / "out111"), "--key", str(private),
         "--baseline", str(reg), "--baseline-channel", "stable", "--baseline-key", str(public)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 4, done.stderr
    report = json.loads((tmp_path / "out111" / "report.json").read_text())
    breaches = [f for f in report["failures"] if "release budget" in f]
    assert any("max_accuracy_drop" in f or "min_agreement_with_previous" in f for f in breaches), report["failures"]
    assert not list((tmp_path / "out111").glob("*.zip"))  # nothing ships

    for bundle in second.bundles:
        publish(bundle, reg, "beta", private)
    promote("tabular-mlp", reg, "beta", "stable", private, platform="android", rollout="10%")
    devices = [f"device-{i:03d}" for i in range(100)]
    first_pull = {d: pull("tabular-mlp", reg, "stable", "android", public, tmp_path / "d" / d, device_id=d).version
                  for d in devices}  # fmt: skip
    new = [d for d, v in first_pull.items() if v == "1.1.0"]
    assert 3 <= len(new) <= 20 and set(first_pull.values()) == {"1.0.0", "1.1.0"}
    again = {d: pull("tabular-mlp", reg, "stable", "android", public, tmp_path / "d" / d, device_id=d).version
             for d in devices[:30]}  # fmt: skip
    assert again == {d: first_pull[d] for d in devices[:30]}  # a device never flips at one fraction

    promote("tabular-mlp", reg, "beta", "stable", private, platform="android", rollout="1")
    full = {pull("tabular-mlp", reg, "stable", "android", public, tmp_path / "d" / d, device_id=d).version
            for d in devices}  # fmt: skip
    assert full == {"1.1.0"}


def test_a_budget_breach_names_the_budget_and_both_values(tmp_path: Path) -> None:
    """The budget logic alone, on a comparison as the build makes it (fast)."""
    from mobex.recipe import ReleaseSection
    from mobex.release.budgets import evaluate_budgets
    from mobex.release.compare import BaselineComparison

    comparison = BaselineComparison(
        platform="android",
        previous={"version": "1.0.0", "size_bytes": 1000, "metrics": {"accuracy": 0.98}},
        new={"version": "1.1.0", "size_bytes": 1300, "metrics": {"accuracy": 0.93}},
        agreement={"top1_agreement": 0.94, "cosine_min": 0.99},
        latency=None,
        size_growth=0.3,
        notes=("latency not compared: this host cannot time one of the two models",),
    )
    timed_elsewhere = replace(comparison, host_cannot_time=True)
    release = ReleaseSection(max_size_growth=0.5, max_accuracy_drop=0.02, min_agreement_with_previous=0.95,
                             max_latency_regression=0.2)  # fmt: skip
    results = {r.metric: r for r in evaluate_budgets(release, comparison)}
    assert results["max_size_growth"].passed
    drop = results["max_accuracy_drop"]
    assert not drop.passed and abs(drop.value - 0.05) < 1e-9 and "1.0.0" in drop.message and "0.02" in drop.message
    assert not results["min_agreement_with_previous"].passed
    latency = results["max_latency_regression"]
    assert not latency.passed and latency.value is None and "cannot time" in latency.message
    skipped = {r.metric: r for r in evaluate_budgets(release, timed_elsewhere)}["max_latency_regression"]
    assert skipped.passed and "not checked on this host" in skipped.message
    assert set(results) == {"max_size_growth", "max_accuracy_drop", "min_agreement_with_previous",
                            "max_latency_regression"}  # fmt: skip


def test_a_bundle_of_another_model_or_a_bad_signature_is_refused_as_a_baseline(tmp_path: Path) -> None:
    from mobex.errors import UsageError, VerificationError
    from mobex.release.baseline import load_baselines

    private, public = generate_keypair(tmp_path / "release.pem")
    other, other_public = generate_keypair(tmp_path / "other.pem")
    result = build(load_recipe(_sample(tmp_path / "v", "1.0.0")), BuildOptions(tmp_path / "out", key=private))
    android = next(b for b in result.bundles if b.name.endswith("android.zip"))
    with pytest.raises(VerificationError), load_baselines([str(android)], key=other_public, model="tabular-mlp",
                                                          platforms=["android"]):  # fmt: skip
        pass
    with pytest.raises(UsageError, match="not of 'digits-cnn'"), load_baselines(
        [str(android)], key=public, model="digits-cnn", platforms=["android"]
    ):
        pass
    with load_baselines([str(android)], key=public, model="tabular-mlp", platforms=["android", "ios"]) as found:
        assert list(found) == ["android"] and found["android"].model_path.is_file()
    with pytest.raises(GateFailed):  # a budget the build cannot meet refuses it (and the reports say why)
        build(load_recipe(_sample(tmp_path / "w", "1.1.0", weights_noise=3.0)),
              BuildOptions(tmp_path / "out2", key=private, baselines=[str(android)]))  # fmt: skip
    report = json.loads((tmp_path / "out2" / "report.json").read_text())
    assert report["status"] == "failed" and "baseline" in report and "android" in report["baseline"]
