"""Which recipes a fleet builds: recipe files, workspace files with paths and glob patterns, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from mobex.errors import RecipeError, UsageError
from mobex.fleet.workspace import expand, is_workspace, workspace_recipes


def _recipes(tmp_path: Path) -> list[Path]:
    out = []
    for name in ("a", "b", "c"):
        (tmp_path / "models" / name).mkdir(parents=True)
        path = tmp_path / "models" / name / "recipe.toml"
        path.write_text(f'[model]\nname = "{name}"\n')
        out.append(path)
    return out


def test_a_workspace_lists_recipes_by_path_and_pattern(tmp_path: Path) -> None:
    a, b, c = _recipes(tmp_path)
    ws = tmp_path / "fleet.toml"
    ws.write_text('[workspace]\nrecipes = ["models/c/recipe.toml", "models/*/recipe.toml"]\n')
    assert is_workspace(ws) and not is_workspace(a)
    assert workspace_recipes(ws) == [c.resolve(), a.resolve(), b.resolve(), c.resolve()]
    assert expand([ws, a]) == [c.resolve(), a.resolve(), b.resolve()]  # each recipe once, first mention first


def test_recipe_files_are_taken_as_given(tmp_path: Path) -> None:
    a, b, _ = _recipes(tmp_path)
    assert expand([b, a]) == [b.resolve(), a.resolve()]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[workspace]\nrecipes = ["models/nothing/*.toml"]\n', "matches no file"),
        ("[workspace]\nrecipes = []\n", "must have recipes"),
        ('[workspace]\nrecipes = "models/a/recipe.toml"\n', "must have recipes"),
        ('[workspace]\nrecipes = ["models/a/recipe.toml"]\nparallel = 3\n', "unknown key(s): parallel"),
    ],
)
def test_bad_workspaces_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    _recipes(tmp_path)
    ws = tmp_path / "fleet.toml"
    ws.write_text(text)
    with pytest.raises(RecipeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        expand([ws])


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such recipe or workspace file"):
        expand([tmp_path / "nope.toml"])
