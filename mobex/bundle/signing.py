"""Sign and verify a bundle directory in the OpenSSF model-signing format (model-signing 1.1.1).

The format, outermost first (`signature.sigstore.json`, at the bundle root):

* a Sigstore bundle v0.3 JSON (`mediaType application/vnd.dev.sigstore.bundle.v0.3+json`) whose
  `verificationMaterial.publicKey.hint` is the hex SHA-256 of the signer's public key (PEM
  SubjectPublicKeyInfo, see `keys.public_key_hint`) and `tlogEntries` is empty (no transparency log);
* a DSSE envelope (`payloadType application/vnd.in-toto+json`): one ECDSA P-256 / SHA-256 DER
  signature over PAE = "DSSEv1 <len(type)> <type> <len(payload)> <payload>";
* an in-toto Statement v1, predicate type `https://model_signing/signature/v1.0`, whose predicate
  lists every file as {name: posix path, algorithm: "sha256", digest: hex} plus the serialization
  settings (`method: files`, `hash_type: sha256`, `allow_symlinks: false`,
  `ignore_paths: ["signature.sigstore.json"]`).

Every file of the bundle is signed except the signature itself, including `manifest.json`, so the
manifest (versions, I/O contract, metrics) cannot be edited without breaking the signature. The
ignored path is recorded in the signed predicate, so the standard verifier re-applies it:
`model_signing verify key DIR --signature DIR/signature.sigstore.json --public_key KEY.pub.pem`.

Why P-256: it is the only curve that model-signing's key signer, iOS CryptoKit
(`P256.Signing.PublicKey(pemRepresentation:)`, `isValidSignature(_:for:)`) and Android
java.security (`KeyFactory "EC"`, `Signature "SHA256withECDSA"`) all support natively, so an app
verifies a bundle with base64, JSON, SHA-256 and one ECDSA check, and no third-party library.

Our verifier is stricter than the standard one: besides model-signing's own check it requires the
key hint, exactly one signature, SHA-256 file serialization, no ignored paths beyond the signature
(and the git paths model-signing's CLI adds), and no file in the directory left unsigned.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mobex.bounded import loads_json, name_list
from mobex.bundle.keys import load_private_key, load_public_key, public_key_hint
from mobex.errors import UsageError, VerificationError
from mobex.files import sha256_file

SIGNATURE_FILE = "signature.sigstore.json"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"

# What a signature may leave unsigned: itself, and the git paths model-signing's CLI always adds
# (they never occur in a bundle, and the no-unsigned-files check below catches them if they do).
_ALLOWED_IGNORE_PATHS = frozenset({SIGNATURE_FILE, ".git", ".gitattributes", ".github", ".gitignore"})
_MAX_SIGNATURE_BYTES = 64 << 20


@dataclass(frozen=True)
class SignatureInfo:
    """What a signature file claims (read without checking it): key hint and signed file digests."""

    key_hint: str | None
    predicate_type: str
    hash_type: str
    ignore_paths: tuple[str, ...]
    files: dict[str, str]  # posix path -> hex digest


def sign_directory(bundle_dir: Path, private_key: Path) -> Path:
    """Sign every file in `bundle_dir` except the signature; write `bundle_dir/signature.sigstore.json`.

    The signature is written to a temporary file beside the directory and moved in, so a stale or
    half-written signature is never hashed and never left behind.
    """
    bundle_dir = Path(bundle_dir)
    private_key = Path(private_key).expanduser()
    if not bundle_dir.is_dir():
        raise UsageError(f"cannot sign {bundle_dir}: not a directory")
    load_private_key(private_key)  # clear errors before model-signing's own
    import model_signing.signing

    target = bundle_dir / SIGNATURE_FILE
    fd, tmp_name = tempfile.mkstemp(dir=bundle_dir.parent, prefix=f".{bundle_dir.name}.", suffix=".sig")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        (
            model_signing.signing.Config()
            .use_elliptic_key_signer(private_key=private_key)
            .set_hashing_config(_hashing_config())
            .sign(bundle_dir, tmp)
        )
        os.replace(tmp, target)
    except ValueError as exc:  # symlinks, special files
        raise UsageError(f"cannot sign {bundle_dir}: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return target


def verify_directory(bundle_dir: Path, public_key: Path) -> None:
    """Check `bundle_dir` against its signature with model-signing; raise VerificationError if not exact.

    The message names the first kind of problem: wrong key, forged signature, or which files
    changed, were added or are missing since signing.
    """
    bundle_dir = Path(bundle_dir)
    public_key = Path(public_key).expanduser()
    key = load_public_key(public_key)
    if not bundle_dir.is_dir():
        raise UsageError(f"cannot verify {bundle_dir}: not a directory")
    sig_path = bundle_dir / SIGNATURE_FILE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise VerificationError(f"{bundle_dir.name} has no {SIGNATURE_FILE}: the bundle is not signed")
    info = read_signature(sig_path)
    _check_policy(info)
    expected_hint = public_key_hint(key)
    if info.key_hint != expected_hint:
        raise VerificationError(
            f"bundle was signed by a different key (signature key hint {info.key_hint}, "
            f"{public_key.name} has {expected_hint})",
            hint="verify with the public key of the key that signed it, or re-sign the bundle",
        )

    import model_signing.verifying
    from cryptography.exceptions import InvalidSignature

    try:
        (
            model_signing.verifying.Config()
            .use_elliptic_key_verifier(public_key=public_key)
            .set_hashing_config(_hashing_config())
            .verify(bundle_dir, sig_path)
        )
    except InvalidSignature as exc:
        raise VerificationError(
            f"{SIGNATURE_FILE} does not verify with {public_key.name}: the signed statement was altered "
            "or the signature was forged"
        ) from exc
    except ValueError as exc:
        message = str(exc)
        if message.startswith("Signature mismatch"):
            raise VerificationError(_describe_mismatch(bundle_dir, info) or message) from exc
        raise VerificationError(f"signature check failed: {message}") from exc
    except (KeyError, TypeError, binascii.Error, json.JSONDecodeError) as exc:
        raise VerificationError(f"{SIGNATURE_FILE} is malformed: {exc!r}") from exc

    unsigned = sorted(set(_relative_files(bundle_dir)) - set(info.files) - {SIGNATURE_FILE})
    if unsigned:
        raise VerificationError(f"files not covered by the signature: {name_list(unsigned)}")


def read_signature(sig_path: Path) -> SignatureInfo:
    """Parse a model-signing signature file without checking it (VerificationError if malformed)."""
    sig_path = Path(sig_path)
    try:
        if sig_path.stat().st_size > _MAX_SIGNATURE_BYTES:
            raise ValueError("file is too large")
        bundle = loads_json(sig_path.read_bytes(), SIGNATURE_FILE, max_bytes=_MAX_SIGNATURE_BYTES)
        if bundle.get("mediaType") != BUNDLE_MEDIA_TYPE:
            raise ValueError(f"mediaType is {bundle.get('mediaType')!r}, expected {BUNDLE_MEDIA_TYPE!r}")
        envelope = bundle["dsseEnvelope"]
        if envelope.get("payloadType") != PAYLOAD_TYPE:
            raise ValueError(f"payloadType is {envelope.get('payloadType')!r}, expected {PAYLOAD_TYPE!r}")
        if not isinstance(envelope.get("signatures"), list) or len(envelope["signatures"]) != 1:
            raise ValueError("the DSSE envelope must carry exactly one signature")
        statement = loads_json(base64.b64decode(envelope["payload"], validate=True), "the signed statement")
        if statement.get("_type") != STATEMENT_TYPE:
            raise ValueError(f"statement _type is {statement.get('_type')!r}, expected {STATEMENT_TYPE!r}")
        predicate = statement["predicate"]
        serialization = predicate["serialization"]
        files: dict[str, str] = {}
        for resource in predicate["resources"]:
            name, digest = str(resource["name"]), str(resource["digest"])
            if name in files:
                raise ValueError(f"resource {name!r} listed twice")
            files[name] = digest
        hint = (bundle.get("verificationMaterial") or {}).get("publicKey", {}).get("hint")
        if serialization.get("method") != "files":
            raise ValueError(f"serialization method is {serialization.get('method')!r}, expected 'files'")
        if serialization.get("allow_symlinks"):
            raise ValueError("signature allows symlinks; bundles never contain them")
        return SignatureInfo(
            key_hint=str(hint) if hint else None,
            predicate_type=str(statement.get("predicateType")),
            hash_type=str(serialization.get("hash_type")),
            ignore_paths=tuple(str(p) for p in serialization.get("ignore_paths", ())),
            files=files,
        )
    except FileNotFoundError as exc:
        raise VerificationError(f"no signature at {sig_path}") from exc
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise VerificationError(f"{sig_path.name} is not a usable model-signing signature: {exc}") from exc


def _check_policy(info: SignatureInfo) -> None:
    """Reject signatures a phone could not check the same way, before doing any work."""
    if info.predicate_type != PREDICATE_TYPE:
        raise VerificationError(f"predicate type {info.predicate_type!r} is not {PREDICATE_TYPE!r}")
    if info.hash_type != "sha256":
        raise VerificationError(
            f"files are hashed with {info.hash_type!r}; mobex bundles use sha256 so phones can check them"
        )
    extra_ignores = sorted(set(info.ignore_paths) - _ALLOWED_IGNORE_PATHS)
    if extra_ignores:
        raise VerificationError(f"signature leaves paths unsigned: {', '.join(extra_ignores)}")
    if not info.key_hint:
        raise VerificationError(
            "signature has no publicKey.hint (pre-1.1 model-signing format)", hint="re-sign the bundle"
        )


def _describe_mismatch(bundle_dir: Path, info: SignatureInfo) -> str | None:
    """Name the files that differ from the (already authenticated) signed list."""
    actual = {p: sha256_file(bundle_dir / p) for p in _relative_files(bundle_dir) if p != SIGNATURE_FILE}
    changed = sorted(p for p in actual.keys() & info.files.keys() if actual[p] != info.files[p])
    added = sorted(actual.keys() - info.files.keys())
    missing = sorted(info.files.keys() - actual.keys())
    parts = []
    if changed:
        parts.append(f"changed since signing: {name_list(changed)}")
    if added:
        parts.append(f"not signed (added after signing): {name_list(added)}")
    if missing:
        parts.append(f"missing (signed but absent): {name_list(missing)}")
    return "bundle content does not match its signature; " + "; ".join(parts) if parts else None


def _hashing_config():
    """SHA-256 per file; ignore only the signature (git paths are not skipped: nothing goes unsigned)."""
    from model_signing import hashing

    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE], ignore_git_paths=False)


def _relative_files(root: Path) -> list[str]:
    """Posix paths of every non-directory under root (symlinks included, so they show up as extra)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            out.append(Path(dirpath, name).relative_to(root).as_posix())
    return sorted(out)
