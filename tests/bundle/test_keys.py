from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mobex.bundle import keys
from mobex.errors import UsageError


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_generate_keypair_writes_private_pkcs8_and_public_pem_0600(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the key files
    try:
        priv, pub = keys.generate_keypair(tmp_path / "ci" / "release.pem")
    finally:
        os.umask(old)
    assert priv == tmp_path / "ci" / "release.pem"
    assert pub == tmp_path / "ci" / "release.pub.pem"
    assert _mode(priv) == 0o600 and _mode(pub) == 0o600
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, unencrypted
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    private_key = keys.load_private_key(priv)
    public_key = keys.load_public_key(pub)
    assert isinstance(private_key.curve, ec.SECP256R1)
    assert private_key.public_key().public_numbers() == public_key.public_numbers()
    assert sorted(p.name for p in priv.parent.iterdir()) == ["release.pem", "release.pub.pem"]  # no temp left


def test_generate_keypair_refuses_to_overwrite(tmp_path: Path) -> None:
    priv, pub = keys.generate_keypair(tmp_path / "k.pem")
    before = (priv.read_bytes(), pub.read_bytes())
    with pytest.raises(UsageError, match="refusing to overwrite"):
        keys.generate_keypair(priv)
    priv.unlink()  # only the public half left: still refused, it belongs to another key
    with pytest.raises(UsageError, match="k.pub.pem already exists"):
        keys.generate_keypair(priv)
    assert pub.read_bytes() == before[1]


@pytest.mark.parametrize(
    ("name", "public"),
    [("release.pem", "release.pub.pem"), ("release", "release.pub.pem"), ("a.b.pem", "a.b.pub.pem")],
)
def test_public_path_for(name: str, public: str) -> None:
    assert keys.public_path_for(Path("/x") / name) == Path("/x") / public


def test_dev_key_path_follows_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MOBEX_CONFIG_DIR", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    assert keys.dev_key_path() == tmp_path / "home" / ".config" / "mobex" / "dev-signing-key.pem"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    assert keys.dev_key_path() == tmp_path / "home" / ".config" / "mobex" / "dev-signing-key.pem"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.dev_key_path() == tmp_path / "xdg" / "mobex" / "dev-signing-key.pem"
    monkeypatch.setenv("MOBEX_CONFIG_DIR", str(tmp_path / "explicit"))
    assert keys.dev_key_path() == tmp_path / "explicit" / "dev-signing-key.pem"


def test_ensure_dev_key_creates_once_and_rederives_public(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOBEX_CONFIG_DIR", str(tmp_path / "cfg"))
    path, created = keys.ensure_dev_key()
    assert created and path == tmp_path / "cfg" / "dev-signing-key.pem"
    assert _mode(path) == 0o600 and _mode(path.parent) == 0o700
    content = path.read_bytes()
    pub = keys.public_path_for(path)
    fingerprint = keys.public_key_fingerprint(pub)
    assert keys.ensure_dev_key() == (path, False)
    assert path.read_bytes() == content
    pub.unlink()
    assert keys.ensure_dev_key() == (path, False)
    assert keys.public_key_fingerprint(pub) == fingerprint


def _pem_private(key, password: bytes | None = None) -> bytes:
    enc = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)


def _pem_public(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        (b"hello, not a key\n", "not a PEM file"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM private key"),
        ("rsa", "not an ECDSA P-256 key"),
        ("p384", "secp384r1"),
        ("encrypted", "encrypted private key"),
        ("public", "holds a public key"),
    ],
)
def test_load_private_key_errors(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "key.pem"
    if content == "rsa":
        content = _pem_private(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    elif content == "p384":
        content = _pem_private(ec.generate_private_key(ec.SECP384R1()))
    elif content == "encrypted":
        content = _pem_private(ec.generate_private_key(ec.SECP256R1()), b"secret")
    elif content == "public":
        content = _pem_public(ec.generate_private_key(ec.SECP256R1()))
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        keys.load_private_key(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"junk", "not a PEM file"), ("private", "holds a private key"), ("p521", "secp521r1")],
)
def test_load_public_key_errors(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "key.pub.pem"
    if content == "private":
        content = _pem_private(ec.generate_private_key(ec.SECP256R1()))
    elif content == "p521":
        content = _pem_public(ec.generate_private_key(ec.SECP521R1()))
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UsageError, match=message):
        keys.load_public_key(path)


def test_fingerprint_is_stable_and_key_specific(keypair, other_keypair) -> None:
    fp = keys.public_key_fingerprint(keypair[1])
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == keys.public_key_fingerprint(keypair[1])
    assert fp != keys.public_key_fingerprint(other_keypair[1])
