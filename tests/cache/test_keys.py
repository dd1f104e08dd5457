"""Key material: canonical JSON of typed values, and what the model's content hash covers."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydantic import BaseModel

from mobex.cache.keys import (
    Unhashable,
    arrays_sha256,
    canonical,
    digest,
    mobex_source_sha256,
    model_source_material,
    tree_sha256,
)


@dataclass(frozen=True)
class _Options:
    threads: int
    limits: dict
    path: str
    ops: frozenset = frozenset()


class _Section(BaseModel):
    runs: int = 5


def test_equal_values_give_equal_digests_and_different_ones_differ(tmp_path: Path) -> None:
    a = _Options(1, {"b": 0.1, "a": 2}, str(tmp_path / "data/train.npz"), frozenset({"y", "x"}))
    b = _Options(1, {"a": 2, "b": 0.1}, str(tmp_path / "data/train.npz"), frozenset({"x", "y"}))
    assert digest(a) == digest(b)
    assert digest(a) != digest(_Options(1, {"a": 2, "b": 0.1000001}, a.path, a.ops))
    assert digest([_Section()]) != digest([_Section(runs=6)])
    assert digest((1, 2)) == digest([1, 2])
    assert digest({"x": 1}) != digest({"x": True})  # 1 and True are different recipe values


def test_paths_inside_the_recipe_folder_are_relative(tmp_path: Path) -> None:
    """The same recipe checked out in another folder (another CI runner) gets the same keys."""
    one, two = tmp_path / "a", tmp_path / "b"
    one.mkdir()
    two.mkdir()
    assert canonical(str(one / "data/train.npz"), one) == "<recipe>/data/train.npz"
    assert digest(_Options(1, {}, str(one / "x")), one) == digest(_Options(1, {}, str(two / "x")), two)
    assert canonical("/elsewhere/x", one) == "/elsewhere/x"


def test_unknown_types_are_refused_not_reprd() -> None:
    with pytest.raises(Unhashable):
        canonical({"f": object()})
    with pytest.raises(Unhashable):
        canonical(lambda: 1)


def test_arrays_hash_covers_dtype_shape_values_and_labels() -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    base = arrays_sha256({"x": x})
    assert arrays_sha256({"x": x.copy()}) == base
    assert arrays_sha256({"x": x.reshape(4, 3)}) != base
    assert arrays_sha256({"x": x.astype(np.float64)}) != base
    assert arrays_sha256({"y": x}) != base
    assert arrays_sha256({"x": x}, np.array([0, 1, 2])) != base
    assert arrays_sha256({"x": np.asfortranarray(x)}) == base  # values, not memory layout


def _recipe_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "recipe"
    (folder / "nets").mkdir(parents=True)
    (folder / "model.py").write_text("import numpy\nfrom helpers import width\nfrom nets import blocks\n")
    (folder / "helpers.py").write_text("import os\nwidth = 3\n")
    (folder / "nets" / "__init__.py").write_text("")
    (folder / "nets" / "blocks.py").write_text("from .layers import conv\n")
    (folder / "nets" / "layers.py").write_text("conv = 1\n")
    (folder / "unrelated.py").write_text("x = 1\n")
    (folder / "w.safetensors").write_bytes(b"weights")
    return folder


def test_model_material_covers_the_factory_and_every_folder_module_it_imports(tmp_path: Path) -> None:
    folder = _recipe_folder(tmp_path)
    material = model_source_material(folder, "model:build", folder / "w.safetensors")
    found = sorted(material["files"])
    assert found == ["helpers.py", "model.py", "nets/__init__.py", "nets/blocks.py", "nets/layers.py"]
    assert "numpy" in material["packages"]  # installed packages by distribution version
    assert "os" not in material["packages"]  # the standard library is the Python version (toolchain)
    before = digest(material)
    (folder / "unrelated.py").write_text("x = 2\n")
    assert digest(model_source_material(folder, "model:build", folder / "w.safetensors")) == before
    (folder / "nets" / "layers.py").write_text("conv = 2\n")  # two imports deep, relative
    changed = digest(model_source_material(folder, "model:build", folder / "w.safetensors"))
    assert changed != before
    (folder / "w.safetensors").write_bytes(b"other weights")
    assert digest(model_source_material(folder, "model:build", folder / "w.safetensors")) != changed


def test_model_material_of_a_program_file_is_its_bytes(tmp_path: Path) -> None:
    (tmp_path / "m.pt2").write_bytes(b"program")
    material = model_source_material(tmp_path, "m.pt2", None)
    assert material == {"source": "m.pt2", "file": tree_sha256(tmp_path / "m.pt2")}


def test_tree_hash_covers_names_and_contents(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"1")
    first = tree_sha256(tmp_path / "a")
    (tmp_path / "a" / "x").rename(tmp_path / "a" / "y")
    assert tree_sha256(tmp_path / "a") != first


def test_mobex_source_hash_is_stable_across_processes() -> None:
    code = "from mobex.cache.keys import mobex_source_sha256; print(mobex_source_sha256())"
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, check=True)
    assert out.stdout.strip() == mobex_source_sha256()
