"""DSSE envelopes (Dead Simple Signing Envelope v1) for channel pointers, the index and root.json.

An envelope is `{"payloadType", "payload" (base64), "signatures": [{"keyid", "sig"}]}`; each
signature is ECDSA P-256 / SHA-256 (DER, base64) over PAE(payloadType, payload) =
`"DSSEv1" SP len(type) SP type SP len(payload) SP payload`. Signing the payload type as well as
the payload is what stops type confusion: a signed pointer cannot be replayed as a root or an
index, because each document kind has its own payloadType and verification demands the expected one.

`keyid` is the hex SHA-256 of the signer's PEM SubjectPublicKeyInfo, the same value as
model-signing's `publicKey.hint`, so one identifier names a key in bundles and in the registry.
It is only a hint for choosing the key: a signature counts only if it verifies under a trusted key
with that id. Several signatures are allowed (a downgrade pointer is co-signed by the release key;
a new root by old and new root keys); `verify` returns the set of trusted key ids that signed.

Parsing is strict and bounded: at most `MAX_ENVELOPE_BYTES`, duplicate JSON keys refused, strict
base64, at most `MAX_SIGNATURES` signatures; every failure is a VerificationError.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mobex.bounded import loads_json
from mobex.bundle.keys import public_key_hint
from mobex.errors import VerificationError

POINTER_TYPE = "application/vnd.mobex.channel-pointer+json"
INDEX_TYPE = "application/vnd.mobex.registry-index+json"
ROOT_TYPE = "application/vnd.mobex.registry-root+json"
MAX_ENVELOPE_BYTES = 1 << 20
MAX_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def keyid_of(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> str:
    """The key id of a P-256 key: hex SHA-256 of its PEM SPKI (model-signing's publicKey.hint)."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return public_key_hint(pub)


def sign(payload_type: str, payload: bytes, signers: Iterable[ec.EllipticCurvePrivateKey]) -> bytes:
    """A DSSE envelope (canonical JSON bytes, trailing newline) signed by each distinct signer."""
    signatures = []
    seen: set[str] = set()
    for key in signers:
        kid = keyid_of(key)
        if kid in seen:
            continue
        seen.add(kid)
        der = key.sign(pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
        signatures.append({"keyid": kid, "sig": base64.b64encode(der).decode("ascii")})
    if not signatures:
        raise ValueError("a DSSE envelope needs at least one signer")
    envelope = {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": payload_type,
        "signatures": signatures,
    }
    return (json.dumps(envelope, sort_keys=True, separators=(",", ":")) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Envelope:
    """A parsed (not yet verified) envelope."""

    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str | None, bytes], ...]  # (keyid hint or None, DER signature)


def parse(data: bytes, what: str = "envelope") -> Envelope:
    """Parse envelope bytes strictly; VerificationError says what is malformed."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise VerificationError(f"{what} is {len(data)} bytes, more than the {MAX_ENVELOPE_BYTES} allowed")
    try:
        obj = loads_strict(data)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        payload_type = obj.get("payloadType")
        payload_b64 = obj.get("payload")
        sigs = obj.get("signatures")
        if not isinstance(payload_type, str) or not isinstance(payload_b64, str):
            raise ValueError("payloadType and payload must be strings")
        if not isinstance(sigs, list) or not sigs:
            raise ValueError("signatures must be a non-empty list")
        if len(sigs) > MAX_SIGNATURES:
            raise ValueError(f"more than {MAX_SIGNATURES} signatures")
        payload = base64.b64decode(payload_b64, validate=True)
        parsed = []
        for s in sigs:
            if not isinstance(s, dict) or not isinstance(s.get("sig"), str):
                raise ValueError("each signature needs a base64 'sig'")
            kid = s.get("keyid")
            if kid is not None and not isinstance(kid, str):
                raise ValueError("keyid must be a string")
            parsed.append((kid or None, base64.b64decode(s["sig"], validate=True)))
    except (ValueError, UnicodeDecodeError, binascii.Error, RecursionError) as exc:
        raise VerificationError(f"{what} is not a valid DSSE envelope: {exc}") from exc
    return Envelope(payload_type, payload, tuple(parsed))


def verify(
    data: bytes | Envelope,
    payload_type: str,
    trusted: Mapping[str, ec.EllipticCurvePublicKey],
    *,
    threshold: int = 1,
    what: str = "envelope",
) -> tuple[bytes, frozenset[str]]:
    """Return (payload, key ids that signed it) if at least `threshold` trusted keys signed.

    The payload type must equal `payload_type` exactly. Signatures by unknown keys are ignored
    (an envelope may carry signatures for other verifiers), invalid ones too; what counts is
    the number of distinct trusted keys with a valid signature.
    """
    env = data if isinstance(data, Envelope) else parse(data, what)
    if env.payload_type != payload_type:
        raise VerificationError(
            f"{what} has payload type {env.payload_type!r}, expected {payload_type!r}",
            hint="a signed document of another kind was served in its place",
        )
    message = pae(env.payload_type, env.payload)
    good: set[str] = set()
    for kid, sig in env.signatures:
        candidates = [(kid, trusted[kid])] if kid in trusted else ([] if kid else list(trusted.items()))
        for cand_id, key in candidates:
            if cand_id in good:
                continue
            try:
                key.verify(sig, message, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                continue
            good.add(cand_id)
            break
    if len(good) < max(threshold, 1):
        known = ", ".join(sorted(k[:12] for k in trusted)) or "none"
        raise VerificationError(
            f"{what} is not signed by {'a trusted key' if threshold <= 1 else f'{threshold} trusted keys'} "
            f"(valid trusted signatures: {len(good)}; trusted key ids: {known}…)",
            hint="check that you pinned the right public key for this registry",
        )
    return env.payload, frozenset(good)


def loads_strict(data: bytes | str) -> Any:
    """json.loads that refuses duplicate keys, NaN/Infinity, bytes that are not UTF-8, and (mobex.bounded)
    documents over MAX_ENVELOPE_BYTES or nested deeper than mobex.bounded.MAX_DEPTH (all ValueErrors)."""
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    hooks = {"object_pairs_hook": _no_duplicates, "parse_constant": _no_constant}
    return loads_json(data, "JSON document", max_bytes=MAX_ENVELOPE_BYTES, **hooks)


def dumps_canonical(obj: Any) -> bytes:
    """Canonical JSON payload bytes: sorted keys, compact separators, UTF-8, trailing newline."""
    return (json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False) + "\n").encode(
        "utf-8"
    )


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
