from __future__ import annotations

import base64
import zipfile
from pathlib import Path

import pytest

from mobex.bundle.archive import safe_extract
from mobex.bundle.verify import read_manifest, verify_bundle
from mobex.errors import UsageError, VerificationError
from mobex.registry import encryption, publish
from mobex.registry.pull import pull

from .conftest import pseudo_random

KEY = bytes(range(32))
MODEL = "model/digits.tflite"


@pytest.fixture
def encrypted(tmp_path: Path, bundle_factory, keypair) -> tuple[Path, Path]:
    plain = bundle_factory("1.0.0")
    out = encryption.encrypt_bundle(plain, tmp_path / "enc" / plain.name, KEY, keypair[0])
    return plain, out


def member(zip_path: Path, name: str) -> bytes:
    with zipfile.ZipFile(zip_path) as zf:
        return zf.read(name)


def test_encrypted_bundle_is_signed_over_ciphertext_and_says_so(encrypted, keypair) -> None:
    plain, enc = encrypted
    manifest = verify_bundle(enc, keypair[1], expect_name="digits", expect_version="1.0.0")
    info = manifest.model["encryption"]
    assert info["scheme"] == encryption.SCHEME and info["key_id"] == encryption.key_id(KEY)
    plain_bytes = member(plain, MODEL)
    cipher = member(enc, MODEL)
    assert cipher.startswith(encryption.MAGIC) and plain_bytes not in cipher
    assert len(cipher) == len(plain_bytes) + len(encryption.MAGIC) + 12 + 16
    assert set(info["files"]) == {MODEL}
    assert info["files"][MODEL]["size"] == len(plain_bytes)
    assert member(enc, "assets/labels.txt") == member(plain, "assets/labels.txt")  # only model files
    assert encryption.is_encrypted(manifest) and not encryption.is_encrypted(read_manifest(plain))
    with pytest.raises(UsageError, match="already encrypted"):
        encryption.encrypt_bundle(enc, enc.with_name("twice.zip"), KEY, keypair[0])


def test_encryption_is_deterministic(encrypted, tmp_path: Path, keypair) -> None:
    plain, enc = encrypted
    again = encryption.encrypt_bundle(plain, tmp_path / "again" / plain.name, KEY, keypair[0])
    assert member(again, MODEL) == member(enc, MODEL)  # same key + same plaintext -> same ciphertext
    assert member(again, "manifest.json") == member(enc, "manifest.json")
    other = encryption.encrypt_bundle(plain, tmp_path / "other" / plain.name, bytes(32), keypair[0])
    assert member(other, MODEL) != member(enc, MODEL)


def test_decrypt_after_verify_restores_the_plaintext(encrypted, tmp_path: Path, keypair) -> None:
    plain, enc = encrypted
    manifest = verify_bundle(enc, keypair[1])
    tree = tmp_path / "tree"
    safe_extract(enc, tree)
    assert encryption.decrypt_tree(tree, manifest, KEY) == [MODEL]
    assert (tree / MODEL).read_bytes() == member(plain, MODEL)
    with pytest.raises(UsageError, match="not the one this bundle was encrypted with"):
        encryption.decrypt_tree(tree, manifest, bytes(32))


def test_tampered_ciphertext_fails_authentication(encrypted, tmp_path: Path, keypair) -> None:
    _, enc = encrypted
    manifest = verify_bundle(enc, keypair[1])
    for offset in (len(encryption.MAGIC) + 2, 40, -3):  # nonce, body, tag
        tree = tmp_path / f"tree{offset}"
        safe_extract(enc, tree)
        data = bytearray((tree / MODEL).read_bytes())
        data[offset] ^= 0x80
        (tree / MODEL).write_bytes(bytes(data))
        with pytest.raises(VerificationError):
            encryption.decrypt_tree(tree, manifest, KEY)
        assert (tree / MODEL).read_bytes() == bytes(data)  # nothing half-decrypted left behind
        assert [p.name for p in (tree / "model").iterdir()] == ["digits.tflite"]


def test_publish_encrypted_then_pull_decrypts(tmp_path: Path, bundle_factory, keypair, monkeypatch) -> None:
    weights = pseudo_random(50_000, b"secret weights")
    plain = bundle_factory("3.0.0", model_bytes=weights)
    reg = tmp_path / "reg"
    result = publish.publish(plain, reg, "stable", keypair[0], encryption_key=KEY)
    assert result.encrypted
    stored = (reg / result.bundle_path).read_bytes()
    assert weights[:4096] not in stored  # the registry/CDN holds ciphertext only
    with pytest.raises(UsageError, match="encrypted model files"):
        pull("digits", reg, "stable", "android", keypair[1], tmp_path / "no-key")
    assert not (tmp_path / "no-key" / "current").exists()
    monkeypatch.setenv(encryption.ENV_VAR, KEY.hex())
    got = pull("digits", reg, "stable", "android", keypair[1], tmp_path / "out", decryption_key=encryption.load_key())
    assert got.decrypted
    assert (tmp_path / "out" / "current" / MODEL).read_bytes() == weights


def test_key_formats(tmp_path: Path, monkeypatch) -> None:
    assert encryption.parse_key(KEY.hex()) == KEY
    assert encryption.parse_key(base64.b64encode(KEY).decode() + "\n") == KEY
    raw = tmp_path / "raw.key"
    raw.write_bytes(KEY)
    assert encryption.load_key(raw) == KEY
    text = tmp_path / "hex.key"
    text.write_text(KEY.hex() + "\n")
    assert encryption.load_key(text) == KEY
    monkeypatch.delenv(encryption.ENV_VAR, raising=False)
    assert encryption.load_key() is None
    monkeypatch.setenv(encryption.ENV_VAR, "too-short")
    with pytest.raises(UsageError, match="not a 256-bit key"):
        encryption.load_key()
    for bad in ("00" * 31, "passphrase-of-exactly-32-chars!!", ""):
        with pytest.raises(UsageError):
            encryption.parse_key(bad)
    assert len(encryption.generate_key()) == 32 and encryption.key_id(KEY) != encryption.key_id(bytes(32))
