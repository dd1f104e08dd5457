"""System packages a few tests need beyond the Python ones (README's set-up installs only those).

`.ci/run` installs them and exports CI=true. Without them, a test skips and says the exact install
command; under CI=true it fails instead, so CI can never pass by skipping.
"""

from __future__ import annotations

import os

import pytest

APT_PACKAGES = "chromium default-jdk-headless libandroid-json-org-java"  # what .ci/run installs


def under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def require_system(present: bool, what: str, packages: str) -> None:
    """Skip (locally) or fail (CI=true) when `what`, from the Debian `packages`, is not installed."""
    if present:
        return
    message = f"{what} is not installed: sudo apt-get install -y --no-install-recommends {packages}"
    if under_ci():
        pytest.fail(f"{message} (CI=true: .ci/run should have installed it)")
    pytest.skip(message)
