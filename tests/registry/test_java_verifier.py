"""The Android reference verifier (java/, plain java.security + org.json) against mobex's conformance vectors."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system_deps import require_system

from .conftest import ROOT, load_vectors_script

JAVA_SRC = ROOT / "java" / "src"
# Debian's libandroid-json-org-java: Android's own org.json implementation (apt-get install libandroid-json-org-java)
ORG_JSON_JARS = [Path("/usr/share/java/json-android.jar")]

@pytest.fixture(scope="module")
def classpath(tmp_path_factory: pytest.TempPathFactory) -> str:
    have_jdk = shutil.which("javac") is not None and shutil.which("java") is not None
    require_system(have_jdk, "a JDK (javac, java)", "default-jdk-headless")
    jar = next((j for j in ORG_JSON_JARS if j.is_file()), None)
    require_system(jar is not None, "Android's org.json", "libandroid-json-org-java")
    classes = tmp_path_factory.mktemp("java-classes")
    sources = sorted(str(p) for p in JAVA_SRC.rglob("*.java"))
    done = subprocess.run(
        ["javac", "-Xlint:all", "-Werror", "--release", "11", "-d", str(classes), "-cp", str(jar), *sources],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return f"{classes}:{jar}"


def run_java(classpath: str, vectors: Path) -> tuple[int, dict[str, dict]]:
    done = subprocess.run(
        ["java", "-cp", classpath, "dev.mobex.verify.Main", str(vectors)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode in (0, 1), done.stderr
    results = {}
    for line in done.stdout.splitlines():
        row = json.loads(line)
        results[row["name"]] = row
    return done.returncode, results


def test_java_verifier_agrees_with_every_vector(classpath: str, vectors: Path) -> None:
    cases = json.loads((vectors / "vectors.json").read_text())["cases"]
    code, results = run_java(classpath, vectors)
    assert set(results) == {c["name"] for c in cases}
    wrong = {c["name"]: results[c["name"]] for c in cases if results[c["name"]]["result"] != c["expect"]}
    assert not wrong, wrong
    assert code == 0
    assert {c["expect"] for c in cases} == {"accept", "reject"}
    assert len([c for c in cases if c["expect"] == "reject"]) >= 20
    reasons = {name: row["reason"] for name, row in results.items()}
    assert "replayed" in reasons["replayed-pointer"] and "expired" in reasons["expired-pointer"]
    assert "another key" in reasons["bundle-wrong-key"] and "unsafe entry" in reasons["dotdot-entry"]
    assert "signed list" in reasons["extra-file"] and "signed list" in reasons["flipped-byte-model"]


def test_python_verifier_agrees_with_every_vector(vectors: Path) -> None:
    script = load_vectors_script()
    cases = json.loads((vectors / "vectors.json").read_text())["cases"]
    verdicts = {c["name"]: script.check_case(vectors, c) for c in cases}
    wrong = {n: v for n, v in verdicts.items() if v[0] != next(c["expect"] for c in cases if c["name"] == n)}
    assert not wrong, wrong
    assert "replayed old pointer" in verdicts["replayed-pointer"][1]
    assert "not a release key" in verdicts["bundle-wrong-key"][1]
    assert "symlink" in verdicts["symlink-entry"][1]
    assert "blake3" in verdicts["blake3-hash-type"][1]


def test_java_verifier_notices_a_wrong_expectation(classpath: str, vectors: Path, tmp_path: Path) -> None:
    """The harness really compares: flip one expectation and Main exits 1."""
    copy = tmp_path / "v"
    shutil.copytree(vectors, copy)
    doc = json.loads((copy / "vectors.json").read_text())
    doc["cases"][0]["expect"] = "reject"
    (copy / "vectors.json").write_text(json.dumps(doc))
    code, _ = run_java(classpath, copy)
    assert code == 1
