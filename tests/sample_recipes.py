"""A sample copied into a test's folder with fewer variants (a faster build of the same real model)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from tests.conftest import SAMPLES


def reduced_sample(name: str, dest: Path, android: list[str], ios: list[str]) -> Path:
    """Copy sample `name` to dest/name; its recipe builds only these variants. Returns the recipe's path."""
    folder = dest / name
    shutil.copytree(SAMPLES / name, folder)
    recipe = folder / "recipe.toml"
    text = recipe.read_text()
    for section, variants in (("android", android), ("ios", ios)):
        pattern = rf"(\[{section}\]\nvariants = )\[[^\]]*\]"
        text, count = re.subn(pattern, lambda m, v=variants: m.group(1) + json.dumps(v), text)
        assert count == 1, f"{name}: no [{section}] variants line"
    recipe.write_text(text)
    return recipe
