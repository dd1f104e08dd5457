from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from mobex.bundle.keys import load_private_key, public_key_fingerprint
from mobex.errors import VerificationError
from mobex.registry import dsse

PAYLOAD = b'{"hello":"world"}\n'


@pytest.fixture(scope="module")
def keys() -> list[ec.EllipticCurvePrivateKey]:
    return [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]


def trusted(*keys: ec.EllipticCurvePrivateKey) -> dict:
    return {dsse.keyid_of(k): k.public_key() for k in keys}


def test_pae_matches_the_dsse_spec_example() -> None:
    # https://github.com/secure-systems-lab/dsse/blob/master/protocol.md, "Test vector"
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert dsse.pae("t", b"") == b"DSSEv1 1 t 0 "


def test_round_trip_and_keyid_is_the_model_signing_hint(keys, keypair) -> None:
    env = dsse.sign(dsse.POINTER_TYPE, PAYLOAD, [keys[0]])
    doc = json.loads(env)
    assert doc["payloadType"] == dsse.POINTER_TYPE
    assert base64.b64decode(doc["payload"]) == PAYLOAD
    payload, signers = dsse.verify(env, dsse.POINTER_TYPE, trusted(keys[0]))
    assert payload == PAYLOAD and signers == {dsse.keyid_of(keys[0])}
    # the same id as `mobex keygen`'s fingerprint and model-signing's publicKey.hint
    assert dsse.keyid_of(load_private_key(keypair[0])) == public_key_fingerprint(keypair[1])


def test_payload_type_is_authenticated(keys) -> None:
    env = dsse.sign(dsse.INDEX_TYPE, PAYLOAD, [keys[0]])
    with pytest.raises(VerificationError, match="payload type"):
        dsse.verify(env, dsse.POINTER_TYPE, trusted(keys[0]))
    # relabelling the type breaks the signature (PAE covers it)
    doc = json.loads(env)
    doc["payloadType"] = dsse.POINTER_TYPE
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        dsse.verify(json.dumps(doc).encode(), dsse.POINTER_TYPE, trusted(keys[0]))


def test_wrong_key_and_tampered_payload_are_refused(keys) -> None:
    env = dsse.sign(dsse.POINTER_TYPE, PAYLOAD, [keys[0]])
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        dsse.verify(env, dsse.POINTER_TYPE, trusted(keys[1]))
    doc = json.loads(env)
    doc["payload"] = base64.b64encode(PAYLOAD.replace(b"world", b"World")).decode()
    with pytest.raises(VerificationError):
        dsse.verify(json.dumps(doc).encode(), dsse.POINTER_TYPE, trusted(keys[0]))


def test_threshold_counts_distinct_trusted_signers(keys) -> None:
    both = dsse.sign(dsse.ROOT_TYPE, PAYLOAD, [keys[0], keys[1], keys[0]])
    assert len(json.loads(both)["signatures"]) == 2  # a repeated signer signs once
    _, signers = dsse.verify(both, dsse.ROOT_TYPE, trusted(keys[0], keys[1]), threshold=2)
    assert len(signers) == 2
    one = dsse.sign(dsse.ROOT_TYPE, PAYLOAD, [keys[0], keys[2]])  # keys[2] is not trusted: ignored
    with pytest.raises(VerificationError, match="2 trusted keys"):
        dsse.verify(one, dsse.ROOT_TYPE, trusted(keys[0], keys[1]), threshold=2)
    # the same signature duplicated does not count twice
    doc = json.loads(one)
    doc["signatures"] = [doc["signatures"][0]] * 2
    with pytest.raises(VerificationError):
        dsse.verify(json.dumps(doc).encode(), dsse.ROOT_TYPE, trusted(keys[0], keys[1]), threshold=2)


def test_missing_or_lying_keyid(keys) -> None:
    doc = json.loads(dsse.sign(dsse.POINTER_TYPE, PAYLOAD, [keys[0]]))
    doc["signatures"][0].pop("keyid")  # no hint: every trusted key is tried
    payload, _ = dsse.verify(json.dumps(doc).encode(), dsse.POINTER_TYPE, trusted(keys[1], keys[0]))
    assert payload == PAYLOAD
    doc["signatures"][0]["keyid"] = dsse.keyid_of(keys[1])  # hint names another trusted key: no match
    with pytest.raises(VerificationError):
        dsse.verify(json.dumps(doc).encode(), dsse.POINTER_TYPE, trusted(keys[1], keys[0]))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(payload="not base64!"), "not a valid DSSE envelope"),
        (lambda d: d.update(signatures=[]), "non-empty list"),
        (lambda d: d.update(signatures=[{"sig": "AA=="}] * 17), "more than 16"),
        (lambda d: d.pop("payloadType"), "must be strings"),
        (lambda d: d["signatures"][0].update(keyid=5), "keyid must be a string"),
    ],
)
def test_malformed_envelopes_are_clean_errors(keys, mutate, message) -> None:
    doc = json.loads(dsse.sign(dsse.POINTER_TYPE, PAYLOAD, [keys[0]]))
    mutate(doc)
    with pytest.raises(VerificationError, match=message):
        dsse.verify(json.dumps(doc).encode(), dsse.POINTER_TYPE, trusted(keys[0]))


def test_strict_json_and_size_cap(keys) -> None:
    env = dsse.sign(dsse.POINTER_TYPE, PAYLOAD, [keys[0]]).decode()
    duplicated = env.replace('{"payload"', '{"payloadType":"x","payload"', 1)
    with pytest.raises(VerificationError, match="duplicate key"):
        dsse.parse(duplicated.encode())
    with pytest.raises(VerificationError, match="not a valid DSSE"):
        dsse.parse(b'{"payload": NaN}')
    with pytest.raises(VerificationError, match="not a valid DSSE"):
        dsse.parse(b"\xff\xfe")
    with pytest.raises(VerificationError, match="more than"):
        dsse.parse(b" " * (dsse.MAX_ENVELOPE_BYTES + 1))
    with pytest.raises(VerificationError):
        dsse.parse(b"[" * 100_000)  # deep nesting: RecursionError becomes a clean error
