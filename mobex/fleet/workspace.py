"""Which recipes a fleet build builds: recipe files given on the command line, or workspace files listing them.

A workspace file is a TOML file with a `[workspace]` table:

    [workspace]
    recipes = ["sample_models/*/recipe.toml", "teams/vision/detector.toml"]

Entries are paths or glob patterns relative to the workspace file; each must match at least one recipe.
"""

from __future__ import annotations

import glob
import tomllib
from pathlib import Path

from mobex.bounded import LimitExceeded, check_toml_limits
from mobex.errors import RecipeError, UsageError

MAX_WORKSPACE_BYTES = 1 << 20


def _read(path: Path) -> dict:
    """The TOML document, size- and depth-checked before tomllib (which recurses once per nesting level)."""
    with path.open("rb") as f:
        data = f.read(MAX_WORKSPACE_BYTES + 1)
    check_toml_limits(data, "a workspace file", max_bytes=MAX_WORKSPACE_BYTES)
    return tomllib.loads(data.decode("utf-8"))


def is_workspace(path: Path) -> bool:
    """True when `path` is a TOML file with a `[workspace]` table (and no `[model]`: then it is a recipe)."""
    try:
        doc = _read(path)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, LimitExceeded):
        return False  # load_recipe reports what is wrong with it
    return "workspace" in doc and "model" not in doc


def workspace_recipes(path: Path) -> list[Path]:
    """The recipes a workspace file lists, in its order (patterns expanded and sorted)."""
    doc = _read(path)
    section = doc["workspace"]
    entries = section.get("recipes") if isinstance(section, dict) else None
    extra = sorted(set(section) - {"recipes"}) if isinstance(section, dict) else []
    if not isinstance(entries, list) or not entries or not all(isinstance(e, str) for e in entries) or extra:
        raise RecipeError(
            f"{path}: [workspace] must have recipes = [...] (paths or glob patterns) and nothing else"
            + (f"; unknown key(s): {', '.join(extra)}" if extra else ""),
            'e.g. [workspace]\\nrecipes = ["models/*/recipe.toml"]',
        )
    out: list[Path] = []
    for entry in entries:
        pattern = str(path.parent / entry)
        found = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(entry) else [pattern]
        matches = [Path(m) for m in found if Path(m).is_file()]
        if not matches:
            hint = "paths are relative to the workspace file"
            raise RecipeError(f"{path}: recipes entry {entry!r} matches no file", hint)
        out.extend(matches)
    return out


def expand(paths: list[Path]) -> list[Path]:
    """Recipe files from the command line's arguments (workspace files expanded), each once, absolute."""
    out: list[Path] = []
    for path in paths:
        if not path.is_file():
            raise UsageError(f"{path}: no such recipe or workspace file", "pass recipe.toml files or a workspace TOML")
        for recipe in workspace_recipes(path) if is_workspace(path) else [path]:
            resolved = recipe.resolve()
            if resolved not in out:
                out.append(resolved)
    return out
