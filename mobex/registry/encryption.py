"""Optional encryption at rest of a bundle's model files (AES-256-GCM), for weights kept off the CDN in clear.

What it protects: the model bytes while they sit on the registry, the CDN or any cache between it
and the app. Someone who copies the registry gets ciphertext. What it does NOT protect: the app
must hold the key to use the model, so anyone who can read the app (or a rooted phone's memory)
can recover the key and the weights; it is obfuscation against casual scraping, not DRM. It hides
nothing else either: the manifest (I/O contract, labels, metrics), the report and the file sizes
stay readable. Core ML's own model encryption (keys managed by Apple, `.mlmodelc` encrypted at
compile time) needs Xcode on macOS and is a different mechanism; this one works on both platforms
and decrypts with the standard AES-GCM of java.security / CryptoKit before loading.

Format (scheme `mobex-aes-256-gcm-v1`): each model file (the .tflite, or every file of the
.mlpackage) is replaced, under the same path, by `MBXE` + 0x01 + 12-byte nonce + ciphertext +
16-byte tag. The AES key and the nonce key are derived from the 32-byte secret with HKDF-SHA256;
the nonce is HMAC(nonce key, AAD)[:12] and the AAD binds the bundle name, version, platform, the
file's path and its plaintext SHA-256, so the same plaintext gives the same ciphertext (rebuilds stay
reproducible) and two different plaintexts never share a nonce. The signed manifest's
`model.encryption` records the scheme, a key id (an HMAC of the key, not the key) and each file's
plaintext sha256 and size. The bundle is then signed as usual, over the ciphertext: `pull` verifies
the signature first and decrypts after, checking every plaintext digest.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mobex.bundle.archive import safe_extract
from mobex.bundle.manifest import Manifest, created_epoch
from mobex.errors import UsageError, VerificationError

SCHEME = "mobex-aes-256-gcm-v1"
ENV_VAR = "MOBEX_ENCRYPTION_KEY"
MAGIC = b"MBXE\x01"
_NONCE = 12
_TAG = 16
_CHUNK = 1 << 20


def generate_key() -> bytes:
    return secrets.token_bytes(32)


def parse_key(text: bytes | str, where: str = "encryption key", *, allow_raw: bool = False) -> bytes:
    """A 32-byte key from 64 hex digits or base64 of 32 bytes (or, from a file, 32 raw binary bytes)."""
    raw = text.encode() if isinstance(text, str) else bytes(text)
    if allow_raw and len(raw) == 32 and not all(0x20 <= b < 0x7F for b in raw):
        return raw
    s = raw.strip()
    try:
        if len(s) == 64:
            return binascii.unhexlify(s)
        decoded = base64.b64decode(s, validate=True)
        if len(decoded) == 32:
            return decoded
    except (binascii.Error, ValueError):
        pass
    raise UsageError(
        f"{where} is not a 256-bit key",
        hint="use 64 hex digits (e.g. `openssl rand -hex 32`) or the base64 of 32 random bytes",
    )


def load_key(key_file: Path | None = None, env_var: str = ENV_VAR) -> bytes | None:
    """The key from `key_file` if given, else from $MOBEX_ENCRYPTION_KEY, else None."""
    if key_file is not None:
        path = Path(key_file).expanduser()
        if not path.is_file():
            raise UsageError(f"encryption key file {path} does not exist")
        return parse_key(path.read_bytes()[:4096], str(path), allow_raw=True)
    value = os.environ.get(env_var)
    if value:
        return parse_key(value, f"${env_var}")
    return None


def key_id(key: bytes) -> str:
    """A public identifier of the key (HMAC, not a hash of the key), so pull can say 'wrong key' early."""
    return hmac.new(key, b"mobex encryption key id", hashlib.sha256).hexdigest()[:32]


def is_encrypted(manifest: Manifest) -> bool:
    return isinstance(manifest.model.get("encryption"), dict)


def encrypt_bundle(
    src_zip: Path, out_zip: Path, key: bytes, signing_key: Path, *, manifest: Manifest | None = None
) -> Path:
    """A new bundle at `out_zip` whose model files are encrypted, signed with `signing_key`.

    Verify `src_zip` first (the caller does, and passes its manifest); this re-signs what it reads.
    """
    from mobex.bundle.verify import build_bundle, read_manifest

    _check_key(key)
    manifest = manifest or read_manifest(src_zip)
    if is_encrypted(manifest):
        raise UsageError(f"{Path(src_zip).name} is already encrypted")
    with tempfile.TemporaryDirectory(prefix="mobex-encrypt-") as work:
        tree = Path(work) / "bundle"
        safe_extract(src_zip, tree)
        files = {}
        for entry in manifest.model_files():
            path = tree / entry.path
            aad = _aad(manifest, entry.path, entry.sha256)
            _encrypt_file(path, key, aad)
            files[entry.path] = {"sha256": entry.sha256, "size": entry.size}
        data = manifest.model_dump(by_alias=True)
        data["model"] = {**data["model"], "encryption": {"scheme": SCHEME, "key_id": key_id(key), "files": files}}
        encrypted = Manifest.model_validate(data)
        return build_bundle(
            tree, encrypted, Path(out_zip), signing_key, source_date_epoch=created_epoch(manifest.created)
        )


def decrypt_tree(bundle_dir: Path, manifest: Manifest, key: bytes) -> list[str]:
    """Decrypt, in place, the model files of an extracted *verified* bundle; return their paths.

    Each plaintext must match the sha256 and size the signed manifest records, else VerificationError.
    """
    _check_key(key)
    info = manifest.model.get("encryption")
    if not isinstance(info, dict):
        return []
    if info.get("scheme") != SCHEME:
        raise VerificationError(f"bundle is encrypted with {info.get('scheme')!r}; this mobex knows {SCHEME}")
    if info.get("key_id") != key_id(key):
        raise UsageError(
            "the decryption key is not the one this bundle was encrypted with",
            hint=f"bundle key id {info.get('key_id')}, your key's id {key_id(key)}",
        )
    files = info.get("files")
    listed = {f.path for f in manifest.model_files()}
    if not isinstance(files, dict) or set(files) != listed:
        raise VerificationError("model.encryption.files must list exactly the model's files")
    done = []
    for rel, plain in sorted(files.items()):
        if (
            not isinstance(plain, dict)
            or not isinstance(plain.get("sha256"), str)
            or not isinstance(plain.get("size"), int)
        ):
            raise VerificationError(f"model.encryption.files[{rel!r}] needs sha256 and size")
        _decrypt_file(Path(bundle_dir) / rel, key, _aad(manifest, rel, plain["sha256"]), plain["sha256"], plain["size"])
        done.append(rel)
    return done


# --- the primitives --------------------------------------------------------------------------


def _keys(key: bytes) -> tuple[bytes, bytes]:
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=b"mobex", info=SCHEME.encode()).derive(key)
    return okm[:32], okm[32:]


def _aad(manifest: Manifest, path: str, plaintext_sha256: str) -> bytes:
    doc = {
        "name": manifest.name,
        "path": path,
        "platform": manifest.platform,
        "plaintext_sha256": plaintext_sha256,
        "scheme": SCHEME,
        "version": manifest.version,
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _encrypt_file(path: Path, key: bytes, aad: bytes) -> None:
    aes_key, nonce_key = _keys(key)
    nonce = hmac.new(nonce_key, aad, hashlib.sha256).digest()[:_NONCE]
    enc = Cipher(algorithms.AES(aes_key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    tmp = path.with_name(path.name + ".enc-tmp")
    with open(path, "rb") as src, open(tmp, "xb") as dst:
        dst.write(MAGIC + nonce)
        while chunk := src.read(_CHUNK):
            dst.write(enc.update(chunk))
        dst.write(enc.finalize() + enc.tag)
    os.replace(tmp, path)


def _decrypt_file(path: Path, key: bytes, aad: bytes, sha256: str, size: int) -> None:
    aes_key, _ = _keys(key)
    total = path.stat().st_size
    header = len(MAGIC) + _NONCE
    if total < header + _TAG:
        raise VerificationError(f"{path.name} is too short to be encrypted")
    with open(path, "rb") as src:
        head = src.read(header)
        if head[: len(MAGIC)] != MAGIC:
            raise VerificationError(f"{path.name} is not in the {SCHEME} format")
        nonce = head[len(MAGIC) :]
        src.seek(total - _TAG)
        tag = src.read(_TAG)
        src.seek(header)
        dec = Cipher(algorithms.AES(aes_key), modes.GCM(nonce, tag)).decryptor()
        dec.authenticate_additional_data(aad)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".dec")
        tmp = Path(tmp_name)
        h = hashlib.sha256()
        written = 0
        try:
            with os.fdopen(fd, "wb") as dst:
                remaining = total - header - _TAG
                while remaining > 0:
                    chunk = src.read(min(_CHUNK, remaining))
                    if not chunk:
                        raise VerificationError(f"{path.name} ended early")
                    remaining -= len(chunk)
                    plain = dec.update(chunk)
                    h.update(plain)
                    written += len(plain)
                    dst.write(plain)
                try:
                    dec.finalize()
                except InvalidTag as exc:
                    raise VerificationError(f"{path.name} failed AES-GCM authentication (tampered?)") from exc
            if h.hexdigest() != sha256 or written != size:
                raise VerificationError(f"decrypted {path.name} does not match its signed plaintext sha256/size")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != 32:
        raise UsageError("an AES-256 key is exactly 32 bytes")
