from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import model_signing
import pytest

from mobex.bundle.keys import public_key_fingerprint
from mobex.bundle.signing import (
    PREDICATE_TYPE,
    SIGNATURE_FILE,
    read_signature,
    sign_directory,
    verify_directory,
)
from mobex.errors import UsageError, VerificationError


@pytest.fixture
def signed_dir(tmp_path: Path, make_staging, keypair) -> Path:
    root = make_staging(tmp_path / "digits-1.2.3-ios", "ios")
    (root / "manifest.json").write_text('{"name": "digits"}\n')
    sign_directory(root, keypair[0])
    return root


def _files(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and p.name != SIGNATURE_FILE
    }


def test_signature_format_covers_every_file_but_itself(signed_dir: Path, keypair) -> None:
    bundle = json.loads((signed_dir / SIGNATURE_FILE).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"]["tlogEntries"] == []
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == public_key_fingerprint(keypair[1])
    envelope = bundle["dsseEnvelope"]
    assert envelope["payloadType"] == "application/vnd.in-toto+json" and len(envelope["signatures"]) == 1
    statement = json.loads(base64.b64decode(envelope["payload"]))
    assert statement["predicateType"] == PREDICATE_TYPE == "https://model_signing/signature/v1.0"
    serialization = statement["predicate"]["serialization"]
    assert serialization == {
        "method": "files",
        "hash_type": "sha256",
        "allow_symlinks": False,
        "ignore_paths": [SIGNATURE_FILE],
    }
    signed = {r["name"]: r["digest"] for r in statement["predicate"]["resources"]}
    assert signed == _files(signed_dir)  # manifest.json included, the signature not
    assert "manifest.json" in signed
    info = read_signature(signed_dir / SIGNATURE_FILE)
    assert info.files == signed and info.key_hint == public_key_fingerprint(keypair[1])
    verify_directory(signed_dir, keypair[1])


def test_standard_model_signing_api_accepts_our_signature(signed_dir: Path, keypair) -> None:
    # No hashing config and no ignore list: the verifier takes both from the signed predicate.
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keypair[1]).verify(
        signed_dir, signed_dir / SIGNATURE_FILE
    )
    (signed_dir / "report.json").write_text('{"variants": ["tampered"]}\n')
    with pytest.raises(ValueError, match="Signature mismatch"):
        model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keypair[1]).verify(
            signed_dir, signed_dir / SIGNATURE_FILE
        )


def test_standard_model_signing_cli_accepts_our_signature(signed_dir: Path, keypair) -> None:
    cmd = [
        sys.executable, "-m", "model_signing", "verify", "key", str(signed_dir),
        "--signature", str(signed_dir / SIGNATURE_FILE), "--public_key", str(keypair[1]),
    ]  # fmt: skip
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "Verification succeeded" in ok.stdout
    (signed_dir / "assets" / "extra.txt").write_text("sneaked in\n")
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "assets/extra.txt" in bad.stderr


def test_resigning_ignores_old_signature(signed_dir: Path, keypair) -> None:
    first = (signed_dir / SIGNATURE_FILE).read_bytes()
    sign_directory(signed_dir, keypair[0])
    assert (signed_dir / SIGNATURE_FILE).read_bytes() != first  # ECDSA is randomized
    assert SIGNATURE_FILE not in read_signature(signed_dir / SIGNATURE_FILE).files
    assert not [p for p in signed_dir.parent.iterdir() if p.name.startswith(".")]  # no temp file left
    verify_directory(signed_dir, keypair[1])


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        ("change", "changed since signing: model/Digits.mlpackage/Data/com.apple.CoreML/weights/weight.bin"),
        ("add", r"not signed \(added after signing\): assets/new.txt"),
        ("remove", r"missing \(signed but absent\): assets/labels.txt"),
        ("unsigned", "not signed"),
    ],
)
def test_verify_directory_names_changed_added_missing_files(
    signed_dir: Path, keypair, flip, tamper: str, message: str
) -> None:
    if tamper == "change":
        weights = signed_dir / "model/Digits.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
        weights.write_bytes(flip(weights.read_bytes()))
    elif tamper == "add":
        (signed_dir / "assets" / "new.txt").write_text("x\n")
    elif tamper == "remove":
        (signed_dir / "assets" / "labels.txt").unlink()
    else:
        (signed_dir / SIGNATURE_FILE).unlink()
    with pytest.raises(VerificationError, match=message):
        verify_directory(signed_dir, keypair[1])


def test_verify_directory_refuses_other_key(signed_dir: Path, other_keypair) -> None:
    with pytest.raises(VerificationError, match="signed by a different key"):
        verify_directory(signed_dir, other_keypair[1])


def _edit_signature(root: Path, edit) -> None:
    path = root / SIGNATURE_FILE
    bundle = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    edit(bundle, statement)
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(bundle))


def test_verify_directory_refuses_edited_statement(signed_dir: Path, keypair, flip) -> None:
    # An attacker swaps the model and rewrites the digest in the statement, keeping the signature.
    weights = signed_dir / "model/Digits.mlpackage/Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(flip(weights.read_bytes()))

    def edit(bundle, statement):
        for r in statement["predicate"]["resources"]:
            if r["name"].endswith("weight.bin"):
                r["digest"] = hashlib.sha256(weights.read_bytes()).hexdigest()

    _edit_signature(signed_dir, edit)
    with pytest.raises(VerificationError, match="does not verify"):
        verify_directory(signed_dir, keypair[1])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b, s: b["verificationMaterial"]["publicKey"].pop("hint"), "no publicKey.hint"),
        (lambda b, s: s.update(predicateType="https://model_signing/Digests/v0.1"), "predicate type"),
        (lambda b, s: s["predicate"]["serialization"].update(hash_type="blake3"), "sha256"),
        (lambda b, s: s["predicate"]["serialization"]["ignore_paths"].append("model"), "leaves paths unsigned"),
        (lambda b, s: b["dsseEnvelope"]["signatures"].append(b["dsseEnvelope"]["signatures"][0]), "exactly one"),
        (lambda b, s: b.update(mediaType="application/json"), "mediaType"),
    ],
)
def test_verify_directory_policy(signed_dir: Path, keypair, edit, message: str) -> None:
    _edit_signature(signed_dir, edit)
    with pytest.raises(VerificationError, match=message):
        verify_directory(signed_dir, keypair[1])


def test_verify_directory_refuses_blake3_signature_the_standard_verifier_accepts(signed_dir: Path, keypair) -> None:
    # Validly signed, but with a hash phones do not have: model_signing accepts it, mobex does not.
    model_signing.signing.Config().use_elliptic_key_signer(private_key=keypair[0]).set_hashing_config(
        model_signing.hashing.Config()
        .use_file_serialization(hashing_algorithm="blake3")
        .set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)
    ).sign(signed_dir, signed_dir / SIGNATURE_FILE)
    model_signing.verifying.Config().use_elliptic_key_verifier(public_key=keypair[1]).verify(
        signed_dir, signed_dir / SIGNATURE_FILE
    )
    with pytest.raises(VerificationError, match="blake3"):
        verify_directory(signed_dir, keypair[1])


def test_verify_directory_refuses_garbage_signature(signed_dir: Path, keypair) -> None:
    (signed_dir / SIGNATURE_FILE).write_text("{not json")
    with pytest.raises(VerificationError, match="not a usable model-signing signature"):
        verify_directory(signed_dir, keypair[1])


def test_sign_directory_refuses_symlinks_and_bad_keys(tmp_path: Path, make_staging, keypair) -> None:
    root = make_staging(tmp_path / "b")
    with pytest.raises(UsageError, match="holds a public key"):
        sign_directory(root, keypair[1])
    (root / "assets" / "link").symlink_to(root / "report.json")
    with pytest.raises(UsageError, match="symlink"):
        sign_directory(root, keypair[0])
    assert not (root / SIGNATURE_FILE).exists()
