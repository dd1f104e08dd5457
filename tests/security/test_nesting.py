"""Issue 12 item 4: deeply nested JSON or TOML (`"[" * 200000 + "]" * 200000`) in a signature file,
manifest, signed statement, pointer, index, reference statistics or recipe is refused with a clear
error (exit 5 for bundle and registry material, 2 for a recipe), never a RecursionError traceback."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from mobex.bounded import LimitExceeded, loads_json, nesting_depth
from mobex.bundle.verify import read_manifest, verify_bundle
from mobex.errors import RecipeError, VerificationError
from mobex.recipe import load_recipe
from mobex.registry import dsse
from tests.security.conftest import tabular_recipe

DEPTH = 200_000
DEEP = b"[" * DEPTH + b"]" * DEPTH


def test_depth_is_counted_outside_strings_and_without_recursion() -> None:
    assert nesting_depth(b'{"a": [1, {"b": "[[[[["}], "c": "\\"[["}') == 3
    assert nesting_depth(DEEP, stop_at=64) == 65
    assert nesting_depth(b"[" * DEPTH) == DEPTH  # unbalanced openers still count
    with pytest.raises(LimitExceeded, match="nests deeper than 64"):
        loads_json(DEEP, "x")
    with pytest.raises(LimitExceeded, match="more than the 10 allowed"):
        loads_json(b"[1, 2, 3, 4, 5]", "x", max_bytes=10)
    assert loads_json(b'{"a": [[[1]]]}', "x") == {"a": [[[1]]]}


@pytest.mark.parametrize(
    "value",
    ["[" * DEPTH + "]" * DEPTH, "{ a = " * 50_000 + "1" + " }" * 50_000],
    ids=["arrays", "inline-tables"],
)
def test_deep_recipe_is_a_recipe_error(sample_copy, value: str) -> None:
    recipe = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])
    text = recipe.read_text().replace("[preprocessing]\n", f"[preprocessing]\ndeep = {value}\n")
    recipe.write_text(text)
    with pytest.raises(RecipeError, match="nests arrays or inline tables deeper than 64"):
        load_recipe(recipe)


def test_deep_recipe_exits_2_from_the_cli(sample_copy, mobex_cli, tmp_path: Path) -> None:
    recipe = tabular_recipe(sample_copy("tabular_mlp"), android=["fp32"])
    recipe.write_text(recipe.read_text() + "\n[gates.all]\n# " + "[" * 10 + "\n")  # a comment does not count
    assert load_recipe(recipe)
    recipe.write_text(recipe.read_text().replace("[gates.all]\n", "[gates.all]\n" + "x = " + DEEP.decode() + "\n"))
    run = mobex_cli("build", str(recipe), "--out", str(tmp_path / "out"))
    assert run.code == 2 and "nests arrays or inline tables" in run.stderr and "Traceback" not in run.stderr


def _with_member(bundle: Path, rewrite_zip, name: str, data: bytes, tmp_path: Path) -> Path:
    return rewrite_zip(bundle, tmp_path / f"crafted-{Path(name).stem}.zip", change={name: lambda _old: data})


def test_deep_signature_file(signed_bundle, rewrite_zip, keypair, tmp_path: Path, mobex_cli) -> None:
    crafted = _with_member(signed_bundle(), rewrite_zip, "signature.sigstore.json", DEEP, tmp_path)
    with pytest.raises(VerificationError, match="nests deeper"):
        verify_bundle(crafted, keypair[1])
    run = mobex_cli("verify", str(crafted), "--key", str(keypair[1]))
    assert run.code == 5 and "nests deeper" in run.stderr and "Traceback" not in run.stderr


def test_deep_signed_statement(signed_bundle, rewrite_zip, keypair, tmp_path: Path) -> None:
    """The DSSE payload inside the signature: parsed before any signature check, so bounded too."""
    bundle = signed_bundle()

    def deep_payload(old: bytes) -> bytes:
        doc = json.loads(old)
        doc["dsseEnvelope"]["payload"] = base64.b64encode(DEEP).decode()
        return json.dumps(doc).encode()

    crafted = rewrite_zip(bundle, tmp_path / "crafted.zip", change={"signature.sigstore.json": deep_payload})
    with pytest.raises(VerificationError, match="signed statement nests deeper"):
        verify_bundle(crafted, keypair[1])


def test_deep_manifest(signed_bundle, rewrite_zip, keypair, tmp_path: Path, mobex_cli) -> None:
    crafted = _with_member(signed_bundle(), rewrite_zip, "manifest.json", DEEP, tmp_path)
    with pytest.raises(VerificationError, match="nests deeper"):
        read_manifest(crafted)
    for args in (["inspect", str(crafted), "--json"], ["verify", str(crafted), "--key", str(keypair[1])]):
        run = mobex_cli(*args)
        assert run.code == 5 and "Traceback" not in run.stderr, (args, run.stderr[-2000:])


def test_deep_reference_statistics(tmp_path: Path, make_staging, make_manifest, keypair, mobex_cli) -> None:
    """Signed by the key, so only `--key` would not catch it: drift parses it bounded either way."""
    from mobex.bundle.verify import build_bundle

    staging = make_staging(tmp_path / "staging")
    (staging / "assets" / "reference_stats.json").write_bytes(DEEP)
    manifest = make_manifest()
    bundle = build_bundle(staging, manifest, tmp_path / manifest.bundle_filename(), keypair[0], source_date_epoch=0)
    data = tmp_path / "new.npz"
    import numpy as np

    np.savez(data, image=np.zeros((4, 1, 8, 8), np.float32))
    for extra in ([], ["--key", str(keypair[1])]):
        run = mobex_cli("drift", str(bundle), str(data), *extra)
        assert run.code == 5, run.stderr[-2000:]
        assert "reference_stats.json is not usable reference statistics" in run.stderr
        assert "nests deeper" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture
def published(tmp_path: Path, signed_bundle, keypair, mobex_cli) -> Path:
    registry = tmp_path / "registry"
    run = mobex_cli("publish", str(signed_bundle()), "--registry", str(registry), "--channel", "beta",
                    "--key", str(keypair[0]))  # fmt: skip
    assert run.code == 0, run.stderr
    return registry


def _sign(payload_type: str, payload: bytes, key: Path) -> bytes:
    from mobex.bundle.keys import load_private_key

    return dsse.sign(payload_type, payload, [load_private_key(key)])


@pytest.mark.parametrize("what", ["envelope", "signed-payload"])
def test_deep_pointer_is_refused_by_pull(published: Path, keypair, tmp_path: Path, mobex_cli, what: str) -> None:
    pointer = published / "models/digits/channels/beta/android.json"
    pointer.write_bytes(DEEP if what == "envelope" else _sign(dsse.POINTER_TYPE, DEEP, keypair[0]))
    run = mobex_cli("pull", "digits", "--from", str(published), "--key", str(keypair[1]), "--out",
                    str(tmp_path / "app"), "--platform", "android", "--channel", "beta")  # fmt: skip
    assert run.code == 5, run.stderr
    assert "nests deeper" in run.stderr and "Traceback" not in run.stderr


def test_deep_root_in_the_registry_is_refused_by_pull(published: Path, keypair, tmp_path: Path, mobex_cli) -> None:
    (published / "trust" / "2.root.json").write_bytes(_sign(dsse.ROOT_TYPE, DEEP, keypair[0]))
    run = mobex_cli("pull", "digits", "--from", str(published), "--key", str(keypair[1]), "--out",
                    str(tmp_path / "app"), "--platform", "android", "--channel", "beta")  # fmt: skip
    assert run.code == 5 and "Traceback" not in run.stderr, run.stderr


def test_publish_over_deep_registry_files(published: Path, signed_bundle, keypair, tmp_path: Path, mobex_cli) -> None:
    """A deep pointer is refused (exit 5); a deep index is unsigned cache: rebuilt from the bundles."""
    (published / "index.json").write_bytes(_sign(dsse.INDEX_TYPE, DEEP, keypair[0]))
    second = signed_bundle(version="1.3.0")
    run = mobex_cli("publish", str(second), "--registry", str(published), "--channel", "beta", "--key", str(keypair[0]))
    assert run.code == 0, run.stderr
    from mobex.registry import index

    assert set(index.read_unverified(published)["models"]["digits"]["versions"]) == {"1.2.3", "1.3.0"}
    (published / "models/digits/channels/beta/android.json").write_bytes(DEEP)
    third = signed_bundle(version="1.4.0")
    run = mobex_cli("publish", str(third), "--registry", str(published), "--channel", "beta", "--key", str(keypair[0]))
    assert run.code == 5 and "nests deeper" in run.stderr and "Traceback" not in run.stderr, run.stderr


def test_deep_crafted_bundle_is_refused_by_publish(signed_bundle, rewrite_zip, keypair, tmp_path: Path, mobex_cli):
    crafted = _with_member(signed_bundle(), rewrite_zip, "signature.sigstore.json", DEEP, tmp_path)
    registry = tmp_path / "registry"
    run = mobex_cli("publish", str(crafted), "--registry", str(registry), "--channel", "beta", "--key", str(keypair[0]))
    assert run.code == 5 and "nests deeper" in run.stderr and "Traceback" not in run.stderr
