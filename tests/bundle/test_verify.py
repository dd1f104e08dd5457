from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import model_signing
import pytest
from pydantic import ValidationError

from mobex.bundle.archive import safe_extract, write_deterministic_zip
from mobex.bundle.manifest import SCHEMA_ID, Manifest, file_entries
from mobex.bundle.signing import SIGNATURE_FILE, sign_directory
from mobex.bundle.verify import build_bundle, read_manifest, verify_bundle
from mobex.errors import UsageError, VerificationError

MODEL = "model/digits.tflite"


@pytest.fixture
def android_zip(tmp_path: Path, make_staging, make_manifest, keypair) -> Path:
    staging = make_staging(tmp_path / "staging")
    return build_bundle(
        staging, make_manifest(), tmp_path / "out" / "digits-1.2.3-android.zip", keypair[0], source_date_epoch=None
    )


def test_build_then_verify_android(android_zip: Path, make_manifest, keypair) -> None:
    with zipfile.ZipFile(android_zip) as zf:
        names = zf.namelist()
        manifest_bytes = zf.read("manifest.json")
    assert names == [
        "assets/labels.txt",
        "assets/reference_stats.json",
        "manifest.json",
        MODEL,
        "report.json",
        SIGNATURE_FILE,
    ]
    manifest = verify_bundle(android_zip, keypair[1], expect_name="digits", expect_platform="android")
    assert [f.path for f in manifest.files] == [
        "assets/labels.txt",
        "assets/reference_stats.json",
        MODEL,
        "report.json",
    ]
    assert manifest.model_dump(exclude={"files"}) == make_manifest().model_dump(exclude={"files"})
    assert manifest_bytes == manifest.to_json_bytes()  # canonical: sorted keys, indent 2, newline
    assert manifest_bytes.endswith(b"}\n") and json.loads(manifest_bytes)["schema"] == SCHEMA_ID
    assert read_manifest(android_zip) == manifest
    with pytest.raises(VerificationError, match="version is '1.2.3', expected '1.2.4'"):
        verify_bundle(android_zip, keypair[1], expect_version="1.2.4")


def test_build_then_verify_ios_and_standard_verifiers_accept_extracted_bundle(
    tmp_path: Path, make_staging, make_manifest, keypair
) -> None:
    staging = make_staging(tmp_path / "staging", "ios")
    out = build_bundle(
        staging, make_manifest("ios"), tmp_path / "digits-1.2.3-ios.zip", keypair[0], source_date_epoch=1_700_000_000
    )
    manifest = verify_bundle(out, keypair[1])
    assert {f.path for f in manifest.model_files()} == {
        p.relative_to(staging).as_posix() for p in (staging / "model").rglob("*") if p.is_file()
    }
    extracted = tmp_path / "extracted"
    safe_extract(out, extracted)
    signature = extracted / SIGNATURE_FILE
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keypair[1]).verify(extracted, signature)
    cli = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", str(extracted),
         "--signature", str(signature), "--public_key", str(keypair[1])],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 0 and "Verification succeeded" in cli.stdout, cli.stderr


def _tampered(tmp_path: Path, rewrite_zip, src: Path, **kwargs) -> Path:
    return rewrite_zip(src, tmp_path / "tampered.zip", **kwargs)


def test_flipped_model_byte_is_refused(tmp_path: Path, android_zip: Path, keypair, rewrite_zip, flip) -> None:
    bad = _tampered(tmp_path, rewrite_zip, android_zip, change={MODEL: flip})
    with pytest.raises(VerificationError, match=f"changed since signing: {MODEL}"):
        verify_bundle(bad, keypair[1])


def test_edited_manifest_is_refused(tmp_path: Path, android_zip: Path, keypair, rewrite_zip) -> None:
    bad = _tampered(
        tmp_path, rewrite_zip, android_zip, change={"manifest.json": lambda b: b.replace(b'"1.2.3"', b'"9.9.9"')}
    )
    assert read_manifest(bad).version == "9.9.9"  # inspect shows it, unverified...
    with pytest.raises(VerificationError, match="changed since signing: manifest.json"):
        verify_bundle(bad, keypair[1])  # ...verify refuses it


def test_flipped_manifest_byte_is_refused(tmp_path: Path, android_zip: Path, keypair, rewrite_zip, flip) -> None:
    bad = _tampered(tmp_path, rewrite_zip, android_zip, change={"manifest.json": flip})
    with pytest.raises(VerificationError, match="manifest.json"):
        verify_bundle(bad, keypair[1])


def test_extra_file_is_refused(tmp_path: Path, android_zip: Path, keypair, rewrite_zip) -> None:
    bad = _tampered(tmp_path, rewrite_zip, android_zip, add=(("assets/payload.so", b"\x7fELF"),))
    with pytest.raises(VerificationError, match="assets/payload.so"):
        verify_bundle(bad, keypair[1])


@pytest.mark.parametrize("victim", [MODEL, "assets/labels.txt", "manifest.json", SIGNATURE_FILE])
def test_removed_file_is_refused(tmp_path: Path, android_zip: Path, keypair, rewrite_zip, victim: str) -> None:
    bad = _tampered(tmp_path, rewrite_zip, android_zip, drop=(victim,))
    with pytest.raises(VerificationError, match="missing|has no"):
        verify_bundle(bad, keypair[1])


def test_resigned_by_another_key_is_refused(tmp_path: Path, android_zip: Path, keypair, other_keypair, flip) -> None:
    # The attacker swaps the model, re-signs everything with their own key, re-zips.
    work = tmp_path / "work"
    safe_extract(android_zip, work)
    (work / MODEL).write_bytes(flip((work / MODEL).read_bytes()))
    sign_directory(work, other_keypair[0])
    write_deterministic_zip(work, tmp_path / "evil.zip", source_date_epoch=0)
    with pytest.raises(VerificationError, match=f"differs from its manifest sha256/size: {MODEL}"):
        verify_bundle(tmp_path / "evil.zip", other_keypair[1])  # their key: the signed manifest still disagrees
    with pytest.raises(VerificationError, match="signed by a different key"):
        verify_bundle(tmp_path / "evil.zip", keypair[1])
    with pytest.raises(VerificationError, match="signed by a different key"):
        verify_bundle(android_zip, other_keypair[1])


def test_validly_signed_but_wrong_manifest_file_list_is_refused(tmp_path: Path, android_zip: Path, keypair) -> None:
    # Signature fine, but the signed manifest does not describe the files: the second layer catches it.
    work = tmp_path / "work"
    safe_extract(android_zip, work)
    data = json.loads((work / "manifest.json").read_text())
    data["files"] = [f for f in data["files"] if f["path"] != "report.json"]
    (work / "manifest.json").write_text(json.dumps(data))
    sign_directory(work, keypair[0])
    write_deterministic_zip(work, tmp_path / "odd.zip", source_date_epoch=0)
    with pytest.raises(VerificationError, match="not listed in the manifest: report.json"):
        verify_bundle(tmp_path / "odd.zip", keypair[1])


def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("add", "message"),
    [
        (("../../escape.txt", b"x"), "'..' component"),
        (("/etc/cron.d/evil", b"x"), "relative posix path"),
        ((_symlink("assets/link"), b"/etc/passwd"), "symlink"),
        (("report.json", b'{"variants": ["evil"]}'), "more than once"),
        (("assets/zeros.json", b"\0" * (4 << 20)), "zip bomb"),
    ],
    ids=["dotdot", "absolute", "symlink", "duplicate", "bomb"],
)
def test_hostile_archive_entries_are_refused(
    tmp_path: Path, android_zip: Path, keypair, rewrite_zip, add, message: str
) -> None:
    name_or_info, data = add
    if isinstance(name_or_info, str):
        name_or_info = zipfile.ZipInfo(name_or_info)
        name_or_info.compress_type = zipfile.ZIP_DEFLATED
    bad = _tampered(tmp_path, rewrite_zip, android_zip, add=((name_or_info, data),))
    with pytest.raises(VerificationError, match=message):
        verify_bundle(bad, keypair[1])
    assert not (tmp_path / "escape.txt").exists() and not Path("/etc/cron.d/evil").exists()


def test_build_is_reproducible_except_signature(
    tmp_path: Path, make_staging, make_manifest, keypair, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    outs = []
    old = os.umask(0o022)
    try:
        for i, mask in enumerate((0o022, 0o077)):
            os.umask(mask)
            staging = make_staging(tmp_path / f"run{i}" / "staging", "ios")
            for p in staging.rglob("*"):
                os.utime(p, (1_000_000_000 + i * 12345, 1_000_000_000 + i * 12345))
            outs.append(
                build_bundle(
                    staging, make_manifest("ios"), tmp_path / f"run{i}" / "b.zip", keypair[0], source_date_epoch=None
                )
            )
    finally:
        os.umask(old)
    a, b = (p.read_bytes() for p in outs)
    assert a != b  # the ECDSA signature is randomized...
    with zipfile.ZipFile(outs[0]) as za, zipfile.ZipFile(outs[1]) as zb:
        ia, ib = za.infolist(), zb.infolist()
        assert [i.filename for i in ia] == [i.filename for i in ib] and ia[-1].filename == SIGNATURE_FILE
        for x, y in zip(ia[:-1], ib[:-1], strict=True):
            assert (x.date_time, x.external_attr, x.compress_type, x.CRC, x.header_offset) == (
                y.date_time, y.external_attr, y.compress_type, y.CRC, y.header_offset,
            )  # fmt: skip
            assert za.read(x) == zb.read(y)
        assert za.read("manifest.json") == zb.read("manifest.json")
        assert ia[0].date_time == (2023, 11, 14, 22, 13, 20)
        signature_at = ia[-1].header_offset
    assert a[:signature_at] == b[:signature_at]  # ...everything before it is byte-identical
    for out in outs:
        verify_bundle(out, keypair[1])


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda s: (s / "notes.md").write_text("x"), "unexpected"),
        (lambda s: (s / "assets" / "alias.txt").symlink_to(s / "report.json"), "symlink"),
        (lambda s: (s / "model" / "digits.tflite").unlink(), "model model/digits.tflite is not in the bundle"),
        (lambda s: (s / "assets" / "labels.txt").write_text("a\nb\n"), "labels"),
        (lambda s: (s / ".gitignore").write_text("*"), "git files"),
    ],
    ids=["unexpected-top-level", "symlink", "no-model", "labels-mismatch", "git"],
)
def test_build_refuses_bad_staging(tmp_path: Path, make_staging, make_manifest, keypair, setup, message) -> None:
    staging = make_staging(tmp_path / "staging")
    setup(staging)
    out = tmp_path / "out.zip"
    with pytest.raises(UsageError, match=message):
        build_bundle(staging, make_manifest(), out, keypair[0], source_date_epoch=0)
    assert not out.exists()


def test_build_skips_os_junk_and_stale_signature(tmp_path: Path, make_staging, make_manifest, keypair) -> None:
    staging = make_staging(tmp_path / "staging")
    (staging / "assets" / ".DS_Store").write_bytes(b"junk")
    (staging / SIGNATURE_FILE).write_text("stale")
    (staging / "manifest.json").write_text("stale")
    out = build_bundle(staging, make_manifest(), tmp_path / "b.zip", keypair[0], source_date_epoch=0)
    manifest = verify_bundle(out, keypair[1])
    assert ".DS_Store" not in {Path(f.path).name for f in manifest.files}
    assert (staging / "manifest.json").read_text() == "stale"  # staging left untouched


def test_verify_and_inspect_usage_errors(tmp_path: Path, android_zip: Path, keypair) -> None:
    with pytest.raises(UsageError, match="holds a private key"):
        verify_bundle(android_zip, keypair[0])
    with pytest.raises(UsageError, match="does not exist"):
        verify_bundle(tmp_path / "nope.zip", keypair[1])
    (tmp_path / "junk.zip").write_bytes(b"PK but not really")
    with pytest.raises(VerificationError, match="not a"):
        read_manifest(tmp_path / "junk.zip")
    with pytest.raises(VerificationError, match="not a valid zip"):
        verify_bundle(tmp_path / "junk.zip", keypair[1])


# --- manifest model -------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.0.0", "0.0.1", "2.0.0-rc.1", "1.0.0+g1a2b3c", "10.20.30-alpha.1+build.5"])
def test_manifest_accepts_semver(make_manifest, version: str) -> None:
    assert make_manifest(version=version).version == version


@pytest.mark.parametrize("version", ["1.0", "v1.0.0", "01.0.0", "1.0.0-", "1.0.0+", "latest", "1.0.0.0"])
def test_manifest_rejects_non_semver(make_manifest, version: str) -> None:
    with pytest.raises(ValidationError, match="SemVer"):
        make_manifest(version=version)


def test_manifest_consistency_rules(make_manifest) -> None:
    android = make_manifest()
    with pytest.raises(ValidationError, match="ships pte or tflite models, not mlpackage"):
        make_manifest(model={**make_manifest("ios").model, "minimum_os": {"android_min_sdk": 24}})
    with pytest.raises(ValidationError, match="android_min_sdk"):
        make_manifest(model={**android.model, "minimum_os": {"ios": "iOS16"}})
    with pytest.raises(ValidationError, match="lacks outputs"):
        make_manifest(model={k: v for k, v in android.model.items() if k != "outputs"})
    with pytest.raises(ValidationError, match="'..' component"):
        make_manifest(files=[{"path": "../x", "sha256": "0" * 64, "size": 1}])
    with pytest.raises(ValidationError, match="more than once"):
        make_manifest(files=[{"path": "a", "sha256": "0" * 64, "size": 1}] * 2)
    with pytest.raises(ValidationError, match="schema"):
        Manifest.model_validate({**android.model_dump(by_alias=True), "schema": "https://example.com/v2"})
    with pytest.raises(ValidationError, match="Extra inputs"):
        Manifest.model_validate({**android.model_dump(by_alias=True), "unexpected": 1})


def test_manifest_json_is_canonical_and_json_safe(make_manifest, tmp_path: Path, make_staging) -> None:
    import numpy as np

    m = make_manifest(metrics={"snr_db": float("inf"), "cosine_min": np.float32(0.5), "nan": float("nan")})
    text = m.to_json_bytes().decode()
    assert json.loads(text)["metrics"] == {"snr_db": None, "cosine_min": 0.5, "nan": None}
    assert "Infinity" not in text and "NaN" not in text
    assert Manifest.from_json_bytes(m.to_json_bytes()) == m
    staging = make_staging(tmp_path / "s")
    entries = file_entries(staging)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert {e.path: e.size for e in entries}[MODEL] == 20_000
