"""Provenance for manifests and reports: where a build came from and which tools made it."""

from __future__ import annotations

import platform
import subprocess
from importlib import metadata
from pathlib import Path

from mobex import __version__

TOOLCHAIN = (
    "torch",
    "litert-torch",
    "ai-edge-litert",
    "ai-edge-quantizer",
    "coremltools",
    "model-signing",
    "numpy",
    "torch-pruning",
)


def toolchain_versions() -> dict[str, str]:
    versions = {"mobex": __version__, "python": platform.python_version()}
    for name in TOOLCHAIN:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_state(folder: Path) -> dict[str, object]:
    """Commit and dirtiness of the git checkout holding `folder`, or {} outside git."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(folder), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit, "dirty": bool(status.strip())}


def provenance(recipe) -> dict:  # noqa: ANN001 - Recipe
    return {
        "recipe_sha256": recipe.sha256,
        "recipe_path": recipe.path.name,
        "source": git_state(recipe.base_dir),
        "toolchain": toolchain_versions(),
    }
