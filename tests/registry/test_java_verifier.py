"""The Android reference verifier (java/, plain java.security + org.json) against mobex's conformance vectors."""

from __future__ import annotations

import json
import re
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
    """Main's exit code and its rows by case name (plus "bucket_mismatches", the summary row)."""
    done = subprocess.run(
        ["java", "-cp", classpath, "dev.mobex.verify.Main", str(vectors)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode in (0, 1), done.stderr
    results = {}
    for line in done.stdout.splitlines():
        row = json.loads(line)
        results[row.get("name", "bucket_mismatches")] = row
    return done.returncode, results


def test_java_verifier_agrees_with_every_vector(classpath: str, vectors: Path) -> None:
    doc = json.loads((vectors / "vectors.json").read_text())
    cases = doc["cases"]
    code, results = run_java(classpath, vectors)
    assert set(results) == {c["name"] for c in cases} | {"bucket_mismatches"}
    wrong = {c["name"]: results[c["name"]] for c in cases if results[c["name"]]["result"] != c["expect"]}
    assert not wrong, wrong
    versions = {c["name"]: (c["expect_version"], results[c["name"]]["version"]) for c in cases if "expect_version" in c}
    assert all(want == got for want, got in versions.values()), versions
    assert results["bucket_mismatches"]["bucket_mismatches"] == 0 and len(doc["buckets"]) >= 40
    assert code == 0
    assert {c["expect"] for c in cases} == {"accept", "reject"}
    assert len([c for c in cases if c["expect"] == "reject"]) >= 20
    reasons = {name: row["reason"] for name, row in results.items() if name != "bucket_mismatches"}
    assert "replayed" in reasons["replayed-pointer"] and "expired" in reasons["expired-pointer"]
    assert "another key" in reasons["bundle-wrong-key"] and "unsafe entry" in reasons["dotdot-entry"]
    assert "signed list" in reasons["extra-file"] and "signed list" in reasons["flipped-byte-model"]
    # rollout, min_app_version and root rotation: the right release, refused for the right reason
    assert results["rollout-outside-bucket"]["version"] == "1.0.0" and len(versions) >= 9
    # 1.0.0 and 1.1.0 bundles can be the same length (deterministic archives): size or digest refuses it
    assert re.search(r"archive (size|sha256) differs", reasons["rollout-outside-served-new-bundle"])
    assert "downgrade" in reasons["rollout-lowered-unflagged"] and "schema v2" in reasons["rollout-v1-schema"]
    assert "too old" in reasons["min-app-too-old"] and "needs an app version" in reasons["min-app-unknown-app"]
    assert "expected 2" in reasons["root-skipped-version"] and "expired" in reasons["root-expired"]
    assert "another key" in reasons["root-rotated-old-release-key"]
    assert "trusted key" in reasons["root-not-cosigned"] and "trusted key" in reasons["root-rotated-old-channel-key"]


def test_python_verifier_agrees_with_every_vector(vectors: Path) -> None:
    script = load_vectors_script()
    cases = json.loads((vectors / "vectors.json").read_text())["cases"]
    verdicts = {c["name"]: script.check_case(vectors, c) for c in cases}
    wrong = {c["name"]: verdicts[c["name"]] for c in cases if not script.agrees(c, verdicts[c["name"]])}
    assert not wrong, wrong
    assert verdicts["rollout-inside-bucket"].version == "1.1.0" and verdicts["rollout-no-device-id"].version == "1.0.0"
    assert "outside-rollout of 1.1.0" in verdicts["rollout-lowered-unflagged"].reason
    assert "nothing app version 5.8.1 may install" in verdicts["min-app-too-old"].reason
    assert "has version 3, expected 2" in verdicts["root-skipped-version"].reason
    from mobex.registry.rollout import bucket

    buckets = doc_buckets(vectors)
    assert all(bucket(b["model"], b["channel"], b["version"], b["device_id"]) == b["bucket"] for b in buckets)
    assert "replayed old pointer" in verdicts["replayed-pointer"][1]
    assert "not a release key" in verdicts["bundle-wrong-key"][1]
    assert "symlink" in verdicts["symlink-entry"][1]
    assert "blake3" in verdicts["blake3-hash-type"][1]


def doc_buckets(vectors: Path) -> list[dict]:
    return json.loads((vectors / "vectors.json").read_text())["buckets"]


def only(doc: dict, name: str) -> dict:
    """The case called `name`, alone in `doc` (so each sabotaged run verifies one case, quickly)."""
    doc["cases"] = [c for c in doc["cases"] if c["name"] == name]
    return doc["cases"][0]


@pytest.mark.parametrize(
    "sabotage",
    [
        lambda doc: only(doc, "valid-android").update(expect="reject"),
        lambda doc: only(doc, "rollout-outside-bucket").update(expect_version="1.1.0"),
        lambda doc: doc.update(cases=[]) or doc["buckets"][0].update(bucket=(doc["buckets"][0]["bucket"] + 1) % 10**6),
    ],
    ids=["expect", "expect_version", "bucket"],
)
def test_java_verifier_notices_a_wrong_expectation(classpath: str, vectors: Path, tmp_path: Path, sabotage) -> None:
    """The harness really compares: change one expectation (verdict, version or bucket) and Main exits 1."""
    doc = json.loads((vectors / "vectors.json").read_text())
    sabotage(doc)
    copy = tmp_path / "v"
    copy.mkdir()
    for child in vectors.iterdir():  # the same files, another vectors.json
        if child.name != "vectors.json":
            (copy / child.name).symlink_to(child)
    (copy / "vectors.json").write_text(json.dumps(doc))
    code, rows = run_java(classpath, copy)
    assert code == 1 and len(rows) == len(doc["cases"]) + 1
