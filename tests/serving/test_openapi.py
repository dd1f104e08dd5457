"""schemathesis against the OpenAPI document the server serves: generated and mutated requests, no 5xx.

It runs the schemathesis CLI (coverage, fuzzing and stateful phases, every default check: no server
error, status codes and content types as documented, responses matching their schemas, invalid
requests refused) over real HTTP against a server on 127.0.0.1.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TOKEN, start_server

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.slow
@pytest.mark.skipif(not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None,
                    reason="schemathesis is not installed (a dev dependency: requirements.lock)")  # fmt: skip
def test_schemathesis_finds_no_server_error_and_no_schema_violation(digits, tmp_path: Path) -> None:
    server = start_server(digits.bundle, digits.public_key, max_samples=4)
    exe = str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis"
    try:
        done = subprocess.run(
            [exe, "run", f"{server.url}/openapi.json", "-H", f"Authorization: Bearer {TOKEN}",
             "--max-examples", "25", "--seed", "1", "--no-color"],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    finally:
        server.stop()
    out = done.stdout + done.stderr
    assert "Server error" not in out and "[500]" not in out, out[-4000:]
    assert done.returncode == 0, out[-4000:]
    assert "4 passed" in out or "Tested: 4" in out, out[-2000:]
