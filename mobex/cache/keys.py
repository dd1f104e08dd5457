"""What a cache key is made of: canonical JSON of typed values, and content hashes of code, weights and data.

A key is the SHA-256 of the canonical JSON of a "material" dict (mobex.cache.build assembles one per
stage). Canonical means: dataclasses and pydantic models become dicts tagged with their type, dict keys are
sorted, tuples and lists are lists, sets are sorted, floats keep `repr` precision, and absolute paths inside
the recipe's folder are written relative to it (so a checkout in another folder shares the cache). A value
of a type this module does not know raises `Unhashable`: a key must never depend on `repr`'s memory
addresses, so such a stage is simply not cached.
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import hashlib
import json
import sys
from collections.abc import Callable, Iterable
from functools import lru_cache
from importlib import metadata, util
from pathlib import Path, PurePath
from typing import Any

import numpy as np

from mobex.files import sha256_file

KEY_SCHEMA = 1  # bump when the material of a key changes meaning: every older entry stops matching


class Unhashable(TypeError):
    """A value has no canonical form (an unknown type): the stage that reads it is not cached."""


def canonical(value: Any, base_dir: Path | None = None) -> Any:
    """`value` as plain JSON data that is the same for equal values in every process (see the module doc)."""
    if value is None or isinstance(value, (bool, int, str)):
        return _relative(value, base_dir) if isinstance(value, str) else value
    if isinstance(value, float):
        return {"float": repr(value)}
    if isinstance(value, enum.Enum):
        return canonical(value.value, base_dir)
    if isinstance(value, PurePath):
        return _relative(str(value), base_dir)
    if isinstance(value, dict):
        return {str(k): canonical(v, base_dir) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v, base_dir) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v, base_dir) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return {"type": _type_name(value), "fields": canonical(fields, base_dir)}
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):  # a pydantic model
        return {"type": _type_name(value), "fields": canonical(value.model_dump(mode="json"), base_dir)}
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return canonical(value.item(), base_dir)
    raise Unhashable(f"no canonical form for a {_type_name(value)}")


def _type_name(value: Any) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


def _relative(text: str, base_dir: Path | None) -> str:
    if base_dir is None:
        return text
    prefix = str(base_dir.resolve())
    if text == prefix:
        return "<recipe>"
    return "<recipe>/" + text[len(prefix) + 1 :] if text.startswith(prefix + "/") else text


def digest(material: Any, base_dir: Path | None = None) -> str:
    """Hex SHA-256 of the canonical JSON of `material`."""
    text = json.dumps(canonical(material, base_dir), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@lru_cache(maxsize=1)
def mobex_source_sha256() -> str:
    """One hash over every file of the installed mobex package: any change to mobex invalidates every entry."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        if path.suffix in (".pyc", ".pyo"):
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return h.hexdigest()


def tree_sha256(path: Path, hash_file: Callable[[Path], str] = sha256_file) -> str:
    """Hex SHA-256 of a file's bytes, or of a folder's sorted (relative path, file hash) listing."""
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    h = hashlib.sha256()
    for file in sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix()):
        h.update(file.relative_to(path).as_posix().encode() + b"\0" + hash_file(file).encode() + b"\n")
    return h.hexdigest()


def arrays_sha256(arrays: dict[str, np.ndarray], labels: np.ndarray | None = None) -> str:
    """Hex SHA-256 of named arrays as read (name, dtype, shape and bytes of each), plus optional labels."""
    h = hashlib.sha256()
    items = sorted(arrays.items()) + ([("\0labels", labels)] if labels is not None else [])
    for name, arr in items:
        arr = np.ascontiguousarray(arr)
        h.update(f"{name}\0{arr.dtype.str}\0{list(arr.shape)}\0".encode())
        h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def model_source_material(
    base_dir: Path, source: str, weights: Path | None, hash_file: Callable[[Path], str] = sha256_file
) -> dict[str, Any]:
    """What the recipe's model is made of, by content: the .pt/.pt2 file, or the factory's module and every
    module of the recipe folder it imports (found by reading their `import` statements), the versions of the
    installed packages they import, and the weights file (large files hashed by `hash_file`)."""
    base_dir = Path(base_dir).resolve()
    material: dict[str, Any] = {"source": source}
    if source.endswith((".pt", ".pt2")):
        material["file"] = hash_file(base_dir / source)
    else:
        files, external = _factory_files(base_dir, source.partition(":")[0])
        material["files"] = {p.relative_to(base_dir).as_posix(): sha256_file(p) for p in files}
        material["packages"] = _package_versions(external)
    if weights is not None:
        material["weights"] = hash_file(weights)
    return material


def _factory_files(base_dir: Path, module: str) -> tuple[list[Path], set[str]]:
    """The recipe-folder files importing `module` executes (itself, its packages' __init__.py and what they
    import from the folder, transitively) and the top-level names of the other modules they import."""
    seen: dict[Path, None] = {}
    external: set[str] = set()
    pending = [module]
    while pending:
        name = pending.pop()
        found = _module_files(base_dir, name)
        if not found:
            top = name.split(".")[0]
            if top not in sys.stdlib_module_names and top not in sys.builtin_module_names:
                external.add(top)
            continue
        for path in found:
            if path in seen:
                continue
            seen[path] = None
            pending.extend(_imports_of(path, base_dir))
    return sorted(seen), external


def _module_files(base_dir: Path, name: str) -> list[Path]:
    """`a.b.c` -> the files of a/__init__.py, a/b/__init__.py and a/b/c(.py|/__init__.py) under base_dir."""
    parts = name.split(".")
    out = []
    for i in range(1, len(parts) + 1):
        stem = base_dir.joinpath(*parts[:i])
        candidate = stem / "__init__.py" if stem.is_dir() else stem.with_suffix(".py")
        if not candidate.is_file():
            return [] if i == 1 else out
        out.append(candidate.resolve())
    return out


def _imports_of(path: Path, base_dir: Path) -> Iterable[str]:
    """Module names a source file imports (absolute ones as written, relative ones resolved)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError):
        return []  # importing it fails too, with a clearer message, when the model is loaded
    package = path.parent.relative_to(base_dir).parts  # () for a module at the top of the folder
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = list(package[: len(package) - (node.level - 1)] if node.level > 1 else package)
                base = ".".join([*anchor, node.module] if node.module else anchor)
            else:
                base = node.module or ""
            if base:
                names.append(base)
                names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _package_versions(tops: set[str]) -> dict[str, str]:
    """Top-level module names -> the installed distributions' versions (or the module file's hash)."""
    if not tops:
        return {}
    out: dict[str, str] = {}
    direct = {top: dist for top in tops if (dist := _distribution_named(top)) is not None}
    for dist in direct.values():
        out[dist] = _version(dist)
    rest = sorted(set(tops) - set(direct))
    dists = metadata.packages_distributions() if rest else {}  # reads every installed package: ~1 s
    for top in rest:
        names = dists.get(top)
        if names:
            for dist in sorted(set(names)):
                out[dist] = _version(dist)
            continue
        try:
            spec = util.find_spec(top)
        except (ImportError, ValueError):
            spec = None
        origin = getattr(spec, "origin", None)
        out[top] = sha256_file(Path(origin)) if origin and Path(origin).is_file() else "not found"
    return out


def _distribution_named(top: str) -> str | None:
    """The distribution of the same name as module `top` when it provides `top` (torch, numpy): the common
    case, found without scanning every installed package as `packages_distributions()` does."""
    try:
        dist = metadata.distribution(top)
    except metadata.PackageNotFoundError:
        return None
    provided = (dist.read_text("top_level.txt") or "").split()
    if not provided:  # no top_level.txt (some build backends): the top-level names of its files
        provided = [f.parts[0].removesuffix(".py") for f in (dist.files or []) if f.parts]
    return dist.metadata["Name"] if top in provided else None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
