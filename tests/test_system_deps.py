"""README's test command must pass on a fresh machine: the tests that need system packages skip there,
saying the install command, and fail under CI=true (what .ci/run exports). Checked by running pytest on
those tests with a PATH that hides the JDK and Chromium."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

TESTS = [
    "tests/registry/test_java_verifier.py",
    "tests/validate/test_report.py::test_report_renders_in_headless_chromium",
]


def _pytest_without_system_packages(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"  # only python itself: no java, javac or chromium
    bin_dir.mkdir(exist_ok=True)
    if not (bin_dir / "python").exists():
        (bin_dir / "python").symlink_to(sys.executable)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update(PATH=str(bin_dir), PYTHONPATH=str(ROOT), **({"CI": ci} if ci is not None else {}))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *TESTS],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/bin/env").exists(), reason="POSIX only")
def test_missing_system_packages_skip_locally_and_fail_in_ci(tmp_path: Path) -> None:
    start = time.monotonic()
    local = _pytest_without_system_packages(tmp_path, None)
    assert local.returncode == 0, local.stdout[-3000:]
    assert "failed" not in local.stdout and "error" not in local.stdout.lower().split("skipped")[-1]
    assert "sudo apt-get install -y --no-install-recommends default-jdk-headless" in local.stdout
    assert "sudo apt-get install -y --no-install-recommends chromium" in local.stdout
    ci = _pytest_without_system_packages(tmp_path, "true")
    assert ci.returncode == 1, ci.stdout[-3000:]
    assert "CI=true: .ci/run should have installed it" in ci.stdout
    assert time.monotonic() - start < 120  # skipped before the session's digits build was made
