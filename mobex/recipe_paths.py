"""Recipe paths stay inside the recipe's folder, and a labels file must fit the model's class output.

A recipe names files (weights, labels, data, a saved model) relative to its folder. Without a check,
`labels = "../../../../etc/passwd"` would put that file into a signed bundle. So every path a
recipe names must resolve (symlinks followed) inside the folder, unless the person running mobex
opts in with `--allow-outside-paths` (build, export, validate) or MOBEX_ALLOW_OUTSIDE_PATHS=1.
The opt-in is on the command line, not in the recipe, so a recipe from someone else cannot grant it
to itself; the CLI sets the environment variable so that the export worker processes, which load
the recipe again, see the same choice.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mobex.errors import RecipeError

if TYPE_CHECKING:
    import numpy as np

    from mobex.recipe import Recipe

ALLOW_ENV = "MOBEX_ALLOW_OUTSIDE_PATHS"


def allow_outside_paths(allow: bool = True) -> None:
    """What `--allow-outside-paths` does: allow recipe paths outside the recipe's folder in this
    process and in the worker processes it starts."""
    if allow:
        os.environ[ALLOW_ENV] = "1"


def outside_paths_allowed() -> bool:
    return os.environ.get(ALLOW_ENV, "").strip().lower() in ("1", "true", "yes")


def check_inside_folder(recipe_path: Path, field: str, relative: Path, full: Path) -> None:
    """Refuse `full` (the recipe's `field`) when it resolves outside the recipe's folder, unless allowed."""
    if outside_paths_allowed():
        return
    folder = recipe_path.parent.resolve()
    real = full.resolve()
    if not real.is_relative_to(folder):
        raise RecipeError(
            f"{recipe_path}: {field}: {str(relative)!r} resolves to {real}, outside the recipe's folder {folder}",
            "keep the recipe's files in its folder (copy them there), or, if you trust this recipe, pass "
            f"--allow-outside-paths (or set {ALLOW_ENV}=1)",
        )


def check_labels_fit(recipe: Recipe, outputs: Sequence[np.ndarray]) -> None:
    """A classifier's labels file must have one label per class of its first output (known after the
    reference run, before any conversion). A single-logit binary classifier may list two labels."""
    labels = recipe.labels()
    if labels is None or recipe.model.task != "classification" or not outputs:
        return
    scores = outputs[0]
    classes = int(scores.reshape(scores.shape[0], -1).shape[1]) if scores.ndim else 1
    if len(labels) == classes or (classes == 1 and len(labels) == 2):
        return
    raise RecipeError(
        f"{recipe.path}: [model].labels: {recipe.model.labels} has {len(labels)} labels, but the model's class "
        f"output has {classes} classes",
        "write one label per output class, in class-index order",
    )
