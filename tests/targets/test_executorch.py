"""The ExecuTorch target as a plugin: registration, variants per platform, the missing-extra error, the target's
runner / I/O / manifest on a real `.pte`, and real builds whose signed bundles carry the `.pte` (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest

from mobex import plugins
from mobex.runtime.executorch import executorch_available

ROOT = Path(__file__).resolve().parents[2]
needs_executorch = pytest.mark.skipif(not executorch_available(), reason="the executorch extra is not installed")


def _recipe(folder: Path, android: str | None, ios: str | None = None, extra: str = "") -> Path:
    """tabular_mlp's recipe with these [android] / [ios] tables (TOML bodies) instead of its own."""
    path = folder / "recipe.toml"
    text = path.read_text()
    text = text[: text.index("[android]")]
    if android is not None:
        text += f"[android]\n{android}\n\n"
    if ios is not None:
        text += f'[ios]\n{ios}\nminimum_deployment_target = "iOS17"\n\n'
    path.write_text(text + "[latency]\nthreads = [1]\nwarmup = 3\nruns = 30\n" + extra)
    return path


def test_the_target_and_its_variants_are_registered() -> None:
    assert "mobex.targets.executorch" in plugins.BUILTIN_TARGET_MODULES
    info = plugins.target_info("executorch")
    assert (info.file_format, info.platforms, info.default_for) == ("pte", ("android", "ios"), ())
    assert plugins.target_for_format("pte") is info
    specs = {s.name: s for s in plugins.variants_of("executorch")}
    assert set(specs) == {"fp32", "int8", "coreml-fp16", "coreml-fp32"}
    assert {n: s.family for n, s in specs.items()} == {
        "fp32": "fp32", "int8": "int8", "coreml-fp16": "fp16", "coreml-fp32": "fp32"
    }  # fmt: skip
    assert specs["int8"].calibration and not specs["fp32"].calibration
    assert specs["coreml-fp16"].platforms == ("ios",) and specs["int8"].platforms == ()
    target = plugins.target("executorch")
    assert target.bundle_model_path("digits-cnn") == "model/digits-cnn.pte"


def test_prefixed_names_pick_executorch_and_unprefixed_keep_their_meaning() -> None:
    assert plugins.parse_request("android", "int8").target == "tflite"
    assert plugins.parse_request("ios", "fp32").target == "coreml"
    request = plugins.parse_request("android", "executorch:int8")
    assert (request.target, request.name, request.spelled) == ("executorch", "int8", "executorch:int8")
    assert plugins.parse_request("ios", "executorch:fp32").target == "executorch"
    assert plugins.parse_request("ios", "executorch:coreml-fp16").spec.family == "fp16"
    with pytest.raises(ValueError, match="'coreml-fp16' is for ios, not android; android can have: fp32, int8"):
        plugins.parse_request("android", "executorch:coreml-fp16")
    with pytest.raises(ValueError, match="unknown ExecuTorch variant 'fp16'"):
        plugins.parse_request("android", "executorch:fp16")


def test_a_recipe_asking_for_a_coreml_delegate_on_android_is_refused(sample_copy) -> None:
    from mobex.errors import RecipeError
    from mobex.recipe import load_recipe

    path = _recipe(sample_copy("tabular_mlp"), 'variants = ["fp32", "executorch:coreml-fp32"]')
    with pytest.raises(RecipeError, match=r"\[android\]\.variants: .*is for ios, not android"):
        load_recipe(path)


def test_the_target_registers_without_executorch_and_preflight_says_how_to_install(sample_copy, tmp_path) -> None:
    """In a process where `import executorch` fails: recipes with ExecuTorch variants load, and a build stops in
    its preflight (before any conversion, no bundle) with a UsageError whose hint is the install command."""
    path = _recipe(sample_copy("tabular_mlp"), 'variants = ["fp32", "executorch:int8"]')
    script = f"""
import sys
sys.modules["executorch"] = None  # any `import executorch...` now raises ImportError
from pathlib import Path
from mobex import plugins
from mobex.errors import UsageError
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
print(sorted(s.name for s in plugins.variants_of("executorch")))
recipe = load_recipe({str(path)!r})
try:
    build(recipe, BuildOptions(out_dir=Path({str(tmp_path / "out")!r}), jobs=1))
except UsageError as e:
    print("UsageError:", e.message, "| hint:", e.hint)
print(sorted(m for m in sys.modules if m.startswith("executorch") and sys.modules[m] is not None))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "['coreml-fp16', 'coreml-fp32', 'fp32', 'int8']"
    assert lines[1].startswith("UsageError: variant(s) executorch:int8 needs the `executorch` package")
    assert "pip install --no-deps executorch==1.5.1" in lines[1]
    assert lines[2] == "[]"  # nothing imported executorch
    assert not list((tmp_path / "out").glob("*.zip"))


@pytest.fixture(scope="module")
def tabular_pte(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tabular sample's fp32 `.pte`, made by the target's own variant builder."""
    if not executorch_available():
        pytest.skip("the executorch extra is not installed")
    from mobex.data import example_inputs, load_validation_and_calibration
    from mobex.recipe import load_recipe
    from mobex.sources import load_model
    from mobex.targets.executorch import ExecutorchOptions, ExecutorchSession

    recipe = load_recipe(ROOT / "sample_models" / "tabular_mlp" / "recipe.toml")
    validation, _ = load_validation_and_calibration(recipe)
    session = ExecutorchSession(ExecutorchOptions(), load_model(recipe), example_inputs(recipe, validation),
                                ["logits"], None)  # fmt: skip
    out = tmp_path_factory.mktemp("pte") / "tabular-mlp-fp32.pte"
    made = plugins.variant("executorch", "fp32").build(session, out)
    assert made.path == out and made.target == "executorch"
    return out


@needs_executorch
def test_the_targets_runner_io_and_manifest_on_a_real_pte(tabular_pte: Path) -> None:
    from mobex.runtime.executorch import ExecutorchRunner
    from mobex.runtime.torch_model import TorchRunner

    target = plugins.target("executorch")
    inputs, outputs = target.read_io(tabular_pte)
    assert [(t.name, t.shape, t.dtype) for t in inputs] == [("features", (1, 13), "float32")]
    assert [(t.name, t.shape) for t in outputs] == [("logits", (1, 3))]
    info = target.runner(tabular_pte, None, 1)
    assert info.backend == "executorch" and isinstance(info.runner, ExecutorchRunner) and info.notes == ()
    assert info.delegation == {"delegate": "XnnpackBackend", "partitions": 1, "reference_ops": 0,
                               "reference_kernels": "ExecuTorch portable kernels", "by_op": {}}  # fmt: skip
    feed = {"features": np.linspace(0, 1000, 13, dtype=np.float32).reshape(1, 13)}
    from mobex.recipe import load_recipe
    from mobex.sources import load_model

    torch_out = TorchRunner(load_model(load_recipe(ROOT / "sample_models/tabular_mlp/recipe.toml")), ["features"]).run(
        feed
    )
    np.testing.assert_allclose(info.runner.run(feed)[0], torch_out[0], rtol=1e-4, atol=1e-4)
    timed = target.latency_runner(tabular_pte, None)
    assert timed is not None and timed(2).num_threads == 2
    assert target.manifest_extras(tabular_pte) == {
        "runtime": {"name": "executorch", "version": version("executorch"), "backends": ["XnnpackBackend"],
                    "kernels": []}
    }  # fmt: skip
    assert target.minimum_os(target.options(_tabular_recipe()), "android") == {"android_min_sdk": 24}
    assert target.minimum_os(target.options(_tabular_recipe()), "ios") == {"ios": "iOS16"}


def _tabular_recipe():  # noqa: ANN202
    from mobex.recipe import load_recipe

    return load_recipe(ROOT / "sample_models" / "tabular_mlp" / "recipe.toml")


def test_int8_options_come_from_the_recipe_and_the_executorch_gate(sample_copy) -> None:
    from mobex.recipe import load_recipe
    from mobex.targets.executorch import ExecutorchTarget

    extra = (
        '\n[quantization]\nrange_estimation = "percentile"\nmax_fallback_layers = 3\n'
        '\n[gates.variants."executorch:int8"]\ntop1_agreement = 0.9\n'
    )
    folder = sample_copy("tabular_mlp")
    recipe = load_recipe(_recipe(folder, 'variants = ["int8", "executorch:int8"]', extra=extra))
    options = ExecutorchTarget().options(recipe)
    assert options.int8.range_estimation == "percentile" and options.int8.max_fallback_layers == 3
    assert options.int8.limits["top1_agreement"] == 0.9  # TFLite's int8 keeps its default 0.97
    assert options.int8_held_out == str(folder / "data" / "train.npz")


def _verify(bundle: Path, public: Path) -> dict:
    from mobex.bundle.verify import verify_bundle

    return verify_bundle(bundle, public).model


@pytest.mark.slow
@needs_executorch
def test_a_build_ships_executorch_int8_on_android_and_the_coreml_delegate_on_ios(sample_copy, tmp_path) -> None:
    """executorch:fp32 and executorch:int8 validated in ExecuTorch's runtime next to TFLite; the named variants
    ship; the bundles are signed, verify, carry the `.pte`, publish to and pull from a registry."""
    from mobex.bundle.keys import generate_keypair
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe
    from mobex.registry.publish import publish
    from mobex.registry.pull import pull
    from mobex.runtime.executorch import ExecutorchRunner

    android = 'variants = ["fp32", "executorch:fp32", "executorch:int8"]\nship = "executorch:int8"'
    ios = 'variants = ["executorch:coreml-fp16"]'
    recipe = load_recipe(_recipe(sample_copy("tabular_mlp"), android, ios))
    private, public = generate_keypair(tmp_path / "keys" / "release.pem")
    result = build(recipe, BuildOptions(out_dir=tmp_path / "out", key=private, jobs=2, source_date_epoch=1_700_000_000))
    entries = {v["id"]: v for v in result.report["variants"]}
    assert {i: (v["target"], v["backend"], v["passed"]) for i, v in entries.items()} == {
        "android/fp32": ("tflite", "litert", True),
        "android/executorch:fp32": ("executorch", "executorch", True),
        "android/executorch:int8": ("executorch", "executorch", True),
        "ios/executorch:coreml-fp16": ("executorch", "mil-reference", True),
    }
    assert entries["android/executorch:int8"]["latency"]["p50_ms"] > 0 and entries["android/fp32"]["latency"]
    assert entries["ios/executorch:coreml-fp16"]["latency"] is None
    assert entries["android/executorch:int8"]["delegation"]["partitions"] == 1
    assert entries["android/executorch:int8"]["quantization_details"]["calibration_samples"] > 0
    assert [v["id"] for v in result.report["variants"] if v["shipped"]] == [
        "android/executorch:int8", "ios/executorch:coreml-fp16"
    ]  # fmt: skip
    bundles = {p.name.rsplit("-", 1)[1]: p for p in result.bundles}
    android_model = _verify(bundles["android.zip"], public)
    assert (android_model["path"], android_model["format"], android_model["quantization"]) == (
        "model/tabular-mlp.pte", "pte", "int8"
    )  # fmt: skip
    assert android_model["runtime"]["version"] == version("executorch")
    assert android_model["runtime"]["backends"] == ["XnnpackBackend"]
    ios_model = _verify(bundles["ios.zip"], public)
    assert ios_model["runtime"]["backends"] == ["CoreMLBackend"] and ios_model["minimum_os"] == {"ios": "iOS17"}
    with zipfile.ZipFile(bundles["android.zip"]) as archive:
        (tmp_path / "x").mkdir()
        (tmp_path / "x" / "m.pte").write_bytes(archive.read("model/tabular-mlp.pte"))
    data = np.load(recipe.resolve(recipe.data.validation))
    out = ExecutorchRunner(tmp_path / "x" / "m.pte").run({"features": data["features"][:1]})
    assert out[0].shape == (1, 3) and np.isfinite(out[0]).all()

    cli = subprocess.run([sys.executable, "-m", "mobex", "inspect", str(bundles["android.zip"]), "--json"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["model"]["format"] == "pte"
    from mobex.errors import UsageError
    from mobex.serving.bundle import open_bundle_zip
    from mobex.serving.launch import load_model
    from mobex.serving.service import ServeOptions

    with pytest.raises(UsageError, match="needs the CoreMLBackend backend"):  # no Core ML in Linux's ExecuTorch
        load_model(open_bundle_zip(bundles["ios.zip"], public), ServeOptions(token=None))
    publish(bundles["android.zip"], tmp_path / "reg", "stable", private)
    pulled = pull("tabular-mlp", tmp_path / "reg", "stable", "android", public, tmp_path / "app")
    assert pulled.version == "1.0.0"
    assert list((tmp_path / "app").rglob("tabular-mlp.pte"))


@pytest.mark.slow
@needs_executorch
def test_fastest_passing_picks_across_formats_in_a_real_build(sample_copy, tmp_path) -> None:
    """TFLite fp32 and ExecuTorch fp32 both pass; the faster one (by the report's p50) is the one bundled."""
    from mobex.bundle.keys import generate_keypair
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe

    android = 'variants = ["fp32", "executorch:fp32"]\nship = "fastest-passing"'
    recipe = load_recipe(_recipe(sample_copy("tabular_mlp"), android))
    private, public = generate_keypair(tmp_path / "k.pem")
    result = build(recipe, BuildOptions(out_dir=tmp_path / "out", key=private, jobs=1))
    entries = result.report["variants"]
    assert all(v["passed"] and v["latency"] for v in entries)
    fastest = min(entries, key=lambda v: (v["latency"]["p50_ms"], v["size_bytes"]))
    assert [v["id"] for v in entries if v["shipped"]] == [fastest["id"]]
    model = _verify(result.bundles[0], public)
    assert model["format"] == {"tflite": "tflite", "executorch": "pte"}[fastest["target"]]
