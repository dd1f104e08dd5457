"""Issue 12 item 3: `$` matches before a final newline, so "1.0.0\\n" passed every check written with
`re.match(...$)`. Every name, version, channel, time, digest and variant check is a full match now,
and \\d means ASCII digits only."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from mobex.bundle.manifest import SEMVER_RE, resolve_source_date_epoch
from mobex.errors import RecipeError, UsageError
from mobex.plugins import find_variant
from mobex.recipe import load_recipe
from mobex.registry import layout
from mobex.registry.pointer import parse_time, semver_key
from tests.security.conftest import tabular_recipe


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("version", "1.0.0\\n", "is not a SemVer version"),
        ("name", "tabular-mlp\\n", "is not a bundle name"),
        ("version", "1.0.1\u0661", "is not a SemVer version"),  # ARABIC-INDIC DIGIT ONE
    ],
)
def test_recipe_name_and_version_must_match_whole(sample_copy, field: str, value: str, message: str) -> None:
    recipe = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])
    text = recipe.read_text()
    old = 'version = "1.0.0"' if field == "version" else 'name = "tabular-mlp"'
    recipe.write_text(text.replace(old, f'{field} = "{value}"'))
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_build_refuses_a_trailing_newline_version_before_any_work(sample_copy, mobex_cli, tmp_path: Path) -> None:
    recipe = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])
    recipe.write_text(recipe.read_text().replace('version = "1.0.0"', 'version = "1.0.0\\n"'))
    run = mobex_cli("build", str(recipe), "--out", str(tmp_path / "out"))
    assert run.code == 2 and "is not a SemVer version" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("check", "value"),
    [
        (layout.check_name, "digits\n"),
        (layout.check_version, "1.0.0\n"),
        (layout.check_version, "1.0.1\u0661"),
        (layout.check_channel, "beta\n"),
        (layout.check_platform, "android\n"),
    ],
)
def test_registry_names_must_match_whole(check, value: str) -> None:
    with pytest.raises(UsageError):
        check(value)


@pytest.mark.parametrize(
    "rel",
    [
        "index.json\n",
        "trust/1.root.json\n",
        "models/digits/channels/beta/android.json\n",
        "models/digits/versions/1.0.0/digits-1.0.0-android.zip\n",
    ],
)
def test_server_whitelist_needs_the_whole_path(rel: str) -> None:
    assert layout.classify(rel) is None
    assert layout.classify(rel.rstrip("\n")) is not None


def test_manifest_fields_must_match_whole(make_manifest) -> None:
    for field, value in (("name", "digits\n"), ("version", "1.2.3\n"), ("created", "2023-11-14T22:13:20Z\n")):
        with pytest.raises(ValidationError):
            make_manifest(**{field: value})
    assert SEMVER_RE.fullmatch("1.2.3-rc.1+build.5")


def test_pointer_times_and_versions_must_match_whole() -> None:
    with pytest.raises(ValueError):
        parse_time("2026-01-31T12:00:00Z\n")
    with pytest.raises(ValueError):
        semver_key("1.0.0\n")
    assert semver_key("1.0.0") > semver_key("1.0.0-rc.1")


def test_variant_names_must_match_whole() -> None:
    def is_coreml_variant(name: str) -> bool:
        return find_variant("coreml", name) is not None

    assert is_coreml_variant("palettize-4bit") and is_coreml_variant("sparse-50")
    assert not is_coreml_variant("palettize-4bit\n") and not is_coreml_variant("sparse-50\n")
    assert not is_coreml_variant("sparse-\u0665\u0660")


def test_source_date_epoch_must_be_ascii_digits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "\u00b2")  # SUPERSCRIPT TWO: str.isdigit() says yes, int() says no
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        resolve_source_date_epoch(None)


def test_publish_refuses_a_channel_with_a_newline(signed_bundle, keypair, tmp_path: Path, mobex_cli) -> None:
    bundle = signed_bundle()
    registry = tmp_path / "registry"
    registry.mkdir()
    run = mobex_cli(
        "publish", str(bundle), "--registry", str(registry), "--channel", "beta\n", "--key", str(keypair[0])
    )
    assert run.code == 2, run.stderr
    assert "channel 'beta\\n' is not valid" in run.stderr and "Traceback" not in run.stderr
    assert not any(registry.rglob("*.zip"))
