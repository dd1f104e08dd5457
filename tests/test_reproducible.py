"""Reproducible bundles: the same recipe built twice (other folders, other umask, same
SOURCE_DATE_EPOCH) gives byte-identical contents and manifest; only the ECDSA signature differs."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from mobex.bundle.keys import generate_keypair
from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe
from tests.conftest import SAMPLES

SIGNATURE = "signature.sigstore.json"


def _build_in(folder: Path, key: Path, umask: int) -> dict[str, dict[str, bytes]]:
    shutil.copytree(SAMPLES / "tabular_mlp", folder)
    recipe_path = folder / "recipe.toml"
    text = recipe_path.read_text()
    text = text.replace('variants = ["fp32", "fp16", "dynamic-int8", "int8"]', 'variants = ["fp32", "int8-weights"]')
    recipe_path.write_text(text.replace('variants = ["fp32", "fp16", "int8-weights"]', 'variants = ["fp16"]'))
    old = os.umask(umask)
    try:
        result = build(
            load_recipe(recipe_path), BuildOptions(out_dir=folder / "dist", key=key, source_date_epoch=1_234_567_890)
        )
    finally:
        os.umask(old)
    bundles = {}
    for path in result.bundles:
        with zipfile.ZipFile(path) as zf:
            bundles[path.name] = {i.filename: (zf.read(i), i.date_time, i.external_attr) for i in zf.infolist()}
    return bundles


def test_two_builds_are_byte_identical_but_the_signature(tmp_path: Path) -> None:
    key, _ = generate_keypair(tmp_path / "key.pem")
    first = _build_in(tmp_path / "a", key, 0o022)
    second = _build_in(tmp_path / "elsewhere" / "b", key, 0o077)
    assert sorted(first) == sorted(second) and len(first) == 2
    for name in first:
        a, b = first[name], second[name]
        assert sorted(a) == sorted(b)
        assert "manifest.json" in a
        for entry in a:
            if entry == SIGNATURE:
                continue
            assert a[entry] == b[entry], f"{name}: {entry} differs between the two builds"
        assert a[SIGNATURE][0] != b[SIGNATURE][0]  # ECDSA signatures are randomized
