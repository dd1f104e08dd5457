"""Issue 12 item 5: recipe paths that leave the recipe's folder, labels that do not fit the model, and
`mobex drift` reading files the signed manifest does not list."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mobex.errors import RecipeError, UsageError, VerificationError
from mobex.monitor.bundle_drift import check_bundle_drift
from mobex.recipe import load_recipe
from mobex.recipe_paths import ALLOW_ENV
from tests.security.conftest import tabular_recipe


@pytest.fixture
def tabular(sample_copy) -> Path:
    return tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])


def _set(recipe: Path, old: str, new: str) -> None:
    text = recipe.read_text()
    assert old in text, old
    recipe.write_text(text.replace(old, new))


def test_labels_pointing_at_etc_passwd_are_refused(tabular: Path, mobex_cli) -> None:
    _set(tabular, 'labels = "labels.txt"', 'labels = "../../../../../../../../etc/passwd"')
    with pytest.raises(RecipeError, match=r"\[model\].labels: .* resolves to /etc/passwd, outside the recipe's folder"):
        load_recipe(tabular)
    run = mobex_cli("build", str(tabular), "--out", str(tabular.parent / "out"))
    assert run.code == 2 and "outside the recipe's folder" in run.stderr and "--allow-outside-paths" in run.stderr
    assert not (tabular.parent / "out").exists()


def test_a_symlink_inside_the_folder_that_points_outside_is_refused(tabular: Path) -> None:
    (tabular.parent / "labels.txt").unlink()
    (tabular.parent / "labels.txt").symlink_to("/etc/passwd")
    with pytest.raises(RecipeError, match="resolves to /etc/passwd"):
        load_recipe(tabular)


@pytest.mark.parametrize(
    ("key", "old", "table"),
    [
        ("weights", 'weights = "weights.safetensors"', None),
        ("validation", 'validation = "data/val.npz"', None),
        ("calibration", 'calibration = "data/calib.npz"', None),
        ("training", 'training = "data/train.npz"', None),
        ("source", 'source = "model:build"', None),
        ("data", None, "[prune.finetune]"),
        ("data", None, "[quantization.finetune]"),
    ],
)
def test_every_recipe_path_must_stay_inside(tabular: Path, tmp_path: Path, key: str, old: str | None, table) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    src = {"weights": "weights.safetensors", "source": "weights.safetensors"}.get(key, "data/train.npz")
    suffix = ".pt2" if key == "source" else Path(src).suffix
    target = outside / f"file{suffix}"
    shutil.copy(tabular.parent / src, target)
    if old is not None:
        _set(tabular, old, f'{key} = "{target}"')
    elif table == "[prune.finetune]":
        tabular.write_text(tabular.read_text() + f'\n[prune]\nmethod = "magnitude"\nsparsity = 0.5\n'
                           f'[prune.finetune]\nepochs = 1\ndata = "{target}"\n')  # fmt: skip
    else:
        tabular.write_text(tabular.read_text() + f'\n[quantization.finetune]\ndata = "{target}"\n')
    with pytest.raises(RecipeError, match="outside the recipe's folder"):
        load_recipe(tabular)


def test_relative_dotdot_that_stays_inside_is_fine(tabular: Path) -> None:
    _set(tabular, 'validation = "data/val.npz"', 'validation = "data/../data/val.npz"')
    assert load_recipe(tabular).data.validation == Path("data/../data/val.npz")


def test_the_user_can_opt_in(tabular: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copy(tabular.parent / "labels.txt", tmp_path / "shared-labels.txt")
    _set(tabular, 'labels = "labels.txt"', f'labels = "{tmp_path / "shared-labels.txt"}"')
    with pytest.raises(RecipeError):
        load_recipe(tabular)
    monkeypatch.setenv(ALLOW_ENV, "1")
    expected = (tmp_path / "shared-labels.txt").read_text().split()
    assert load_recipe(tabular).labels() == expected and len(expected) == 3


@pytest.mark.slow
def test_opt_in_reaches_the_export_workers(sample_copy, tmp_path: Path, mobex_cli) -> None:
    """Both platforms: the two export processes load the recipe again and must see the CLI's choice."""
    recipe = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"], ios=["fp32"])
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.move(recipe.parent / "data" / "val.npz", shared / "val.npz")
    _set(recipe, 'validation = "data/val.npz"', f'validation = "{shared / "val.npz"}"')
    out = tmp_path / "out"
    refused = mobex_cli("build", str(recipe), "--out", str(out))
    assert refused.code == 2 and "outside the recipe's folder" in refused.stderr
    run = mobex_cli("build", str(recipe), "--out", str(out), "--allow-outside-paths", "--json")
    assert run.code == 0, run.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.zip")) == ["tabular-mlp-1.0.0-android.zip", "tabular-mlp-1.0.0-ios.zip"]


def test_labels_must_fit_the_class_output_before_any_conversion(tabular: Path, tmp_path: Path) -> None:
    from mobex.pipeline import BuildOptions, build

    (tabular.parent / "labels.txt").write_text("\n".join(f"label {i}" for i in range(24)) + "\n")
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=r"labels.txt has 24 labels, but the model's class output has 3 classes"):
        build(load_recipe(tabular), BuildOptions(out_dir=out, jobs=1))
    assert not out.exists() or not any(out.iterdir())  # refused before the export stage made anything


def _bundle_with_stats_file(tmp_path: Path, make_staging, make_manifest, keypair, stats_file: str) -> Path:
    from mobex.bundle.verify import build_bundle

    staging = make_staging(tmp_path / "staging")
    manifest = make_manifest()
    manifest.model["reference_stats_file"] = stats_file
    return build_bundle(staging, manifest, tmp_path / manifest.bundle_filename(), keypair[0], source_date_epoch=0)


@pytest.mark.parametrize("stats_file", ["/etc/passwd", "../../../../etc/passwd", "assets/../../outside.json"])
def test_drift_reads_no_path_outside_the_bundle(tmp_path: Path, make_staging, make_manifest, keypair, stats_file):
    bundle = _bundle_with_stats_file(tmp_path, make_staging, make_manifest, keypair, stats_file)
    data = tmp_path / "new.npz"
    np.savez(data, image=np.zeros((4, 1, 8, 8), np.float32))
    for key in (None, keypair[1]):
        with pytest.raises(VerificationError, match="reference_stats_file"):
            check_bundle_drift(bundle, data, key=key)


def test_drift_reads_only_files_the_manifest_lists(tmp_path, make_staging, make_manifest, keypair, rewrite_zip):
    """A file slipped into the zip after signing (drift without --key trusts the zip's manifest)."""
    bundle = _bundle_with_stats_file(tmp_path, make_staging, make_manifest, keypair, "assets/extra.json")
    data = tmp_path / "new.npz"
    np.savez(data, image=np.zeros((4, 1, 8, 8), np.float32))
    crafted = rewrite_zip(bundle, tmp_path / "crafted.zip", add=(("assets/extra.json", b'{"schema": "x"}'),))
    with pytest.raises(VerificationError, match="assets/extra.json is not one of the files the manifest lists"):
        check_bundle_drift(crafted, data)


def test_a_bundle_without_reference_stats_still_gets_the_rebuild_hint(tmp_path, make_staging, make_manifest, keypair):
    from mobex.bundle.verify import build_bundle

    staging = make_staging(tmp_path / "staging")
    (staging / "assets" / "reference_stats.json").unlink()
    manifest = make_manifest()
    bundle = build_bundle(staging, manifest, tmp_path / manifest.bundle_filename(), keypair[0], source_date_epoch=0)
    data = tmp_path / "new.npz"
    np.savez(data, image=np.zeros((4, 1, 8, 8), np.float32))
    with pytest.raises(UsageError, match="rebuild the bundle"):
        check_bundle_drift(bundle, data)
