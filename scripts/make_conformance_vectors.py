#!/usr/bin/env python3
"""Generate conformance vectors for mobex pointer and bundle verifiers (Python, Java, Swift, ...).

Usage: python scripts/make_conformance_vectors.py OUT_DIR

OUT_DIR/vectors.json lists cases; each names a signed pointer file, an optional bundle zip, what
to trust (either `channel_key` and `release_key` to pin, or `trust`: a `pin` (root public key or
root.json) and a `roots` folder of trust/N.root.json files to walk), the request (model, channel,
platform), the verifier's clock (`now`, Unix seconds), the last sequence it accepted
(`last_sequence`), the installed version (or null), the device id and app version (or null), and
the expected outcome (`expect`: accept | reject, and `expect_version`: the release installed) with
the reason (`why`). `buckets` lists rollout buckets (model, channel, version, device_id -> bucket)
that every implementation of the bucketing hash must reproduce.

The valid cases are real bundles (`mobex.bundle.verify.build_bundle`) and real pointers signed as
the registry signs them; the rest each break one rule: a flipped byte, an extra or missing file,
`../` and absolute entries, a symlink entry, a duplicate entry, a bundle or pointer signed by
another key, a replayed or expired pointer, the wrong channel, platform or model, the wrong payload
type or predicate type, a blake3 hash type, an archive larger than its signed size, unflagged or
channel-only downgrades, a version that differs from the manifest, a pointer edited after signing;
staged rollouts (inside and outside the bucket, no device id, a raised fraction, a forged lower
fraction, the wrong bundle for the device, edited or v1-schema rollout fields), min_app_version
(old, missing and SemVer-ordered app versions, the fallback for an old app), and a rotated root
(new channel and release keys accepted, old ones refused, a successor not co-signed by the old
root, a skipped version, an expired root, a shipped root.json as the pin).
Cases that tamper with a bundle behind a *valid* pointer model a stolen channel key: the pointer
layer passes and the bundle signature must still refuse. Keys are fresh on every run.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import stat
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mobex.artifacts import TensorSpec
from mobex.bundle.keys import generate_keypair, load_private_key
from mobex.bundle.manifest import Manifest, iso_utc, model_section
from mobex.bundle.verify import build_bundle
from mobex.errors import MobexError
from mobex.registry import dsse, layout, trust
from mobex.registry.pointer import SCHEMA_ID, BundleRef, Release, Rollout, new_pointer
from mobex.registry.pull import check_pointer
from mobex.registry.rollout import bucket

MODEL = "digits"
PUBLISHED = datetime(2026, 1, 1, tzinfo=UTC)
NOW = int((PUBLISHED + timedelta(days=1)).timestamp())
EXPIRES_IN = timedelta(days=14)
LABELS = ["zero", "one", "two"]


def _pseudo_random(n: int, seed: bytes) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


def _staging(root: Path, platform: str, seed: bytes) -> Path:
    if platform == "android":
        files = {"model/digits.tflite": _pseudo_random(6000, seed)}
    else:
        pkg = "model/Digits.mlpackage"
        files = {
            f"{pkg}/Manifest.json": b'{"fileFormatVersion": "1.0.0"}\n',
            f"{pkg}/Data/com.apple.CoreML/model.mlmodel": _pseudo_random(1500, seed + b"m"),
            f"{pkg}/Data/com.apple.CoreML/weights/weight.bin": _pseudo_random(6000, seed + b"w"),
        }
    files["assets/labels.txt"] = ("\n".join(LABELS) + "\n").encode()
    files["report.json"] = b'{"variants": []}\n'
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _manifest(version: str, platform: str) -> Manifest:
    ios = platform == "ios"
    return Manifest(
        name=MODEL,
        version=version,
        platform=platform,
        created=iso_utc(1_700_000_000),
        model=model_section(
            path="model/Digits.mlpackage" if ios else "model/digits.tflite",
            format="mlpackage" if ios else "tflite",
            quantization="fp16" if ios else "fp32",
            inputs=[TensorSpec("image", (1, 1, 8, 8), "float32")],
            outputs=[TensorSpec("logits", (1, 3), "float32")],
            minimum_os={"ios": "iOS16"} if ios else {"android_min_sdk": 24},
        ),
        labels=LABELS,
        task="classification",
    )


def build(out: Path, version: str, platform: str, key: Path, work: Path) -> Path:
    staging = _staging(work / f"staging-{version}-{platform}-{key.stem}", platform, f"{version}{platform}".encode())
    return build_bundle(staging, _manifest(version, platform), out, key, source_date_epoch=1_700_000_000)


def rewrite_zip(
    src: Path,
    dst: Path,
    *,
    drop: tuple[str, ...] = (),
    change: dict[str, Callable[[bytes], bytes]] | None = None,
    add: tuple[tuple[zipfile.ZipInfo | str, bytes], ...] = (),
) -> Path:
    """Copy a zip entry by entry (no safety checks: this is how an attacker writes one)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info)
            if change and info.filename in change:
                data = change[info.filename](data)
            zout.writestr(info, data)
        for name_or_info, data in add:
            zout.writestr(name_or_info, data)
    return dst


def flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def resign_statement(mutate: Callable[[dict], None], release: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    """A signature.sigstore.json transform: edit the in-toto statement and re-sign it with the release key."""

    def transform(data: bytes) -> bytes:
        bundle = json.loads(data)
        env = bundle["dsseEnvelope"]
        statement = json.loads(base64.b64decode(env["payload"]))
        mutate(statement)
        payload = json.dumps(statement, separators=(",", ":")).encode()
        sig = release.sign(dsse.pae(env["payloadType"], payload), ec.ECDSA(hashes.SHA256()))
        env["payload"] = base64.b64encode(payload).decode()
        env["signatures"] = [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]
        return json.dumps(bundle).encode()

    return transform


def sign_pointer(
    zip_path: Path,
    signers: list[ec.EllipticCurvePrivateKey],
    *,
    version: str,
    platform: str = "android",
    channel: str = "stable",
    model: str = MODEL,
    sequence: int = 4,
    downgrade: bool = False,
    size_delta: int = 0,
    payload_type: str = dsse.POINTER_TYPE,
    min_app_version: str | None = None,
    rollout: Rollout | None = None,
    edit: Callable[[dict], None] | None = None,
) -> bytes:
    """A pointer to `zip_path` signed by `signers`; `edit` changes the payload before signing (bypassing checks)."""
    data = zip_path.read_bytes()
    ptr = new_pointer(
        model=model, channel=channel, platform=platform, sequence=sequence, version=version,
        sha256=hashlib.sha256(data).hexdigest(), size=len(data) + size_delta, now=PUBLISHED,
        expires_in=EXPIRES_IN, downgrade=downgrade, min_app_version=min_app_version, rollout=rollout,
    )  # fmt: skip
    payload = ptr.to_payload()
    if edit is not None:
        doc = json.loads(payload)
        edit(doc)
        payload = dsse.dumps_canonical(doc)
    return dsse.sign(payload_type, payload, signers)


def staged_over(fallback_zip: Path, version: str, ppm: int, min_app_version: str | None = None) -> Rollout:
    """A rollout section: `ppm` of devices get the pointer's version, the others `fallback_zip` (`version`)."""
    data = fallback_zip.read_bytes()
    ref = BundleRef(path=layout.bundle_path(MODEL, version, "android"), sha256=hashlib.sha256(data).hexdigest(),
                    size=len(data))  # fmt: skip
    return Rollout(fraction_ppm=ppm, fallback=Release(version=version, bundle=ref, min_app_version=min_app_version))


def device_in(version: str, ppm: int, inside: bool = True, channel: str = "stable") -> str:
    """The first device id 'device-N' inside (or outside) the rollout of `version` at `ppm`."""
    ids = (f"device-{i}" for i in range(100_000))
    return next(d for d in ids if (bucket(MODEL, channel, version, d) < ppm) == inside)


def generate(out: Path) -> Path:
    """Write every vector under `out` (created; must not exist or be empty) and return vectors.json."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty")
    (out / "keys").mkdir(parents=True)
    channel_pem, channel_pub = generate_keypair(out / "keys" / "channel.pem")
    release_pem, release_pub = generate_keypair(out / "keys" / "release.pem")
    attacker_pem, _ = generate_keypair(out / "keys" / "attacker.pem")
    channel = load_private_key(channel_pem)
    release = load_private_key(release_pem)
    attacker = load_private_key(attacker_pem)
    cases: list[dict] = []

    with tempfile.TemporaryDirectory(prefix="mobex-vectors-") as tmp:
        work = Path(tmp)
        new_android = build(out / "digits-1.1.0-android.zip", "1.1.0", "android", release_pem, work)
        old_android = build(out / "digits-1.0.0-android.zip", "1.0.0", "android", release_pem, work)
        ios = build(out / "digits-1.1.0-ios.zip", "1.1.0", "ios", release_pem, work)
        by_attacker = build(work / "attacker.zip", "1.1.0", "android", attacker_pem, work)

        def case(name: str, expect: str, why: str, pointer: bytes, bundle: Path | None, **over: object) -> None:
            folder = out / name
            folder.mkdir()
            (folder / "pointer.json").write_bytes(pointer)
            bundle_rel = None
            if bundle is not None:
                shutil.copyfile(bundle, folder / "bundle.zip")
                bundle_rel = f"{name}/bundle.zip"
            entry = {
                "name": name,
                "expect": expect,
                "why": why,
                "pointer": f"{name}/pointer.json",
                "bundle": bundle_rel,
                "channel_key": "keys/channel.pub.pem",
                "release_key": "keys/release.pub.pem",
                "request": {"model": MODEL, "channel": "stable", "platform": "android"},
                "now": NOW,
                "last_sequence": 3,
                "installed_version": None,
                "device_id": None,
                "app_version": None,
            }
            entry.update(over)
            cases.append(entry)

        def tampered(name: str, **kwargs: object) -> Path:
            return rewrite_zip(new_android, work / f"{name}.zip", **kwargs)  # type: ignore[arg-type]

        ok = sign_pointer(new_android, [channel], version="1.1.0")
        case("valid-android", "accept", "a real bundle behind a real pointer", ok, new_android)
        case(
            "valid-ios", "accept", "an .mlpackage bundle",
            sign_pointer(ios, [channel], version="1.1.0", platform="ios"), ios,
            request={"model": MODEL, "channel": "stable", "platform": "ios"},
        )  # fmt: skip
        case(
            "rollback-signed", "accept", "a downgrade flagged and co-signed by the release key",
            sign_pointer(old_android, [channel, release], version="1.0.0", downgrade=True), old_android,
            installed_version="1.1.0",
        )  # fmt: skip
        case(
            "pointer-only-equal-sequence", "accept", "the same sequence again is not a replay (nothing new)",
            sign_pointer(new_android, [channel], version="1.1.0", sequence=3), None,
        )  # fmt: skip
        bundle_cases(case, tampered, channel, release, new_android, by_attacker, ok, work)
        pointer_cases(case, channel, attacker, new_android, old_android, ok)
        rollout_cases(case, channel, new_android, old_android)
        min_app_cases(case, channel, new_android, old_android)
        trust_cases(case, out, work, channel, release)

    doc = {
        "schema": "https://mobex.dev/schemas/conformance-vectors/v1",
        "skew_seconds": 300,
        "cases": cases,
        "buckets": bucket_vectors(),
    }
    path = out / "vectors.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def edit_signed(envelope: bytes, change: Callable[[dict], None]) -> bytes:
    """The envelope with its payload edited and the signatures kept (they no longer match)."""
    env = json.loads(envelope)
    payload = json.loads(base64.b64decode(env["payload"]))
    change(payload)
    env["payload"] = base64.b64encode(dsse.dumps_canonical(payload)).decode()
    return json.dumps(env).encode()


def bundle_cases(
    case: Callable[..., None], tampered: Callable[..., Path], channel: ec.EllipticCurvePrivateKey,
    release: ec.EllipticCurvePrivateKey, new_android: Path, by_attacker: Path, ok: bytes, work: Path,
) -> None:  # fmt: skip
    """Bundles tampered with behind a valid (or re-signed) pointer: each must be refused."""
    flipped = tampered("flipped", change={"model/digits.tflite": flip})
    case("flipped-byte-archive", "reject", "archive differs from the pointer's sha256", ok, flipped)
    case(
        "flipped-byte-model", "reject", "one model byte changed; pointer re-signed (stolen channel key)",
        sign_pointer(flipped, [channel], version="1.1.0"), flipped,
    )  # fmt: skip
    for name, why, kwargs in (
        ("extra-file", "a file added after signing", {"add": (("assets/extra.txt", b"hello\n"),)}),
        ("missing-file", "a signed file removed", {"drop": ("assets/labels.txt",)}),
        ("dotdot-entry", "a ../ entry (zip-slip)", {"add": (("../evil.txt", b"x"),)}),
        ("absolute-entry", "an absolute entry", {"add": (("/tmp/evil.txt", b"x"),)}),
        ("duplicate-entry", "manifest.json twice", {"add": (("manifest.json", b"{}"),)}),
        ("symlink-entry", "a symlink entry", {"add": ((_symlink_info("model/link"), b"/etc/passwd"),)}),
        (
            "wrong-predicate-type", "predicateType changed and re-signed",
            {"change": {"signature.sigstore.json": resign_statement(
                lambda s: s.update(predicateType="https://example.com/other/v1"), release)}},
        ),
        (
            "blake3-hash-type", "hash_type blake3, re-signed",
            {"change": {"signature.sigstore.json": resign_statement(
                lambda s: s["predicate"]["serialization"].update(hash_type="blake3"), release)}},
        ),
    ):  # fmt: skip
        bad = tampered(name, **kwargs)
        case(name, "reject", why, sign_pointer(bad, [channel], version="1.1.0"), bad)
    case(
        "bundle-wrong-key", "reject", "bundle signed by a key that is not the release key",
        sign_pointer(by_attacker, [channel], version="1.1.0"), by_attacker,
    )  # fmt: skip
    case(
        "oversize-archive", "reject", "archive larger than the signed size (endless data)",
        sign_pointer(new_android, [channel], version="1.1.0", size_delta=-1), new_android,
    )  # fmt: skip
    renamed = work / "digits-1.2.0-android.zip"
    shutil.copyfile(new_android, renamed)
    case(
        "manifest-version-mismatch", "reject", "pointer says 1.2.0, the signed manifest 1.1.0",
        sign_pointer(renamed, [channel], version="1.2.0"), renamed,
    )  # fmt: skip


def pointer_cases(
    case: Callable[..., None], channel: ec.EllipticCurvePrivateKey, attacker: ec.EllipticCurvePrivateKey,
    new_android: Path, old_android: Path, ok: bytes,
) -> None:  # fmt: skip
    """The pointer rules: signer, replay, expiry, identity, payload type, downgrades, edits."""
    case("pointer-wrong-key", "reject", "pointer signed by another key",
         sign_pointer(new_android, [attacker], version="1.1.0"), new_android)  # fmt: skip
    case("replayed-pointer", "reject", "sequence lower than the last one accepted", ok, None, last_sequence=5)
    case("expired-pointer", "reject", "now is past expires + skew", ok, None,
         now=int((PUBLISHED + EXPIRES_IN + timedelta(hours=1)).timestamp()))  # fmt: skip
    case("wrong-channel", "reject", "a beta pointer served for stable",
         sign_pointer(new_android, [channel], version="1.1.0", channel="beta"), None)  # fmt: skip
    case("wrong-platform", "reject", "an android pointer served for ios", ok, None,
         request={"model": MODEL, "channel": "stable", "platform": "ios"})  # fmt: skip
    case("wrong-model", "reject", "another model's pointer", ok, None,
         request={"model": "other", "channel": "stable", "platform": "android"})  # fmt: skip
    case("wrong-payload-type", "reject", "a signed index served as a pointer",
         sign_pointer(new_android, [channel], version="1.1.0", payload_type=dsse.INDEX_TYPE), None)  # fmt: skip
    case("downgrade-unflagged", "reject", "older version without downgrade: true",
         sign_pointer(old_android, [channel], version="1.0.0"), old_android, installed_version="1.1.0")  # fmt: skip
    case("downgrade-channel-only", "reject", "downgrade not co-signed by the release key",
         sign_pointer(old_android, [channel], version="1.0.0", downgrade=True), old_android,
         installed_version="1.1.0")  # fmt: skip
    case("pointer-edited", "reject", "payload changed after signing",
         edit_signed(ok, lambda d: d.update(sequence=99)), None)  # fmt: skip


def rollout_cases(case: Callable[..., None], channel: ec.EllipticCurvePrivateKey, new: Path, old: Path) -> None:
    """Staged rollouts of 1.1.0 over 1.0.0: which devices get which bundle, and forged fractions."""
    at10 = staged_over(old, "1.0.0", 100_000)
    inside, outside = device_in("1.1.0", 100_000), device_in("1.1.0", 100_000, inside=False)
    ptr = sign_pointer(new, [channel], version="1.1.0", rollout=at10)
    case("rollout-inside-bucket", "accept", "a device inside the 10% gets 1.1.0", ptr, new,
         device_id=inside, expect_version="1.1.0")  # fmt: skip
    case("rollout-outside-bucket", "accept", "a device outside the 10% gets the fallback 1.0.0", ptr, old,
         device_id=outside, expect_version="1.0.0")  # fmt: skip
    case("rollout-no-device-id", "accept", "without a device id: the fallback", ptr, old, expect_version="1.0.0")
    case("rollout-outside-served-new-bundle", "reject", "a device outside is served the rolled-out bundle",
         ptr, new, device_id=outside)  # fmt: skip
    raised = sign_pointer(new, [channel], version="1.1.0", sequence=5, rollout=staged_over(old, "1.0.0", 500_000))
    case("rollout-raised-keeps-device", "accept", "raising 10% to 50% keeps the device inside", raised, new,
         device_id=inside, last_sequence=4, installed_version="1.1.0", expect_version="1.1.0")  # fmt: skip
    lowered = sign_pointer(new, [channel], version="1.1.0", sequence=5, rollout=staged_over(old, "1.0.0", 1))
    case("rollout-lowered-unflagged", "reject", "a lower fraction would move an updated device back to 1.0.0",
         lowered, old, device_id=inside, last_sequence=4, installed_version="1.1.0")  # fmt: skip
    case("rollout-fraction-edited", "reject", "fraction_ppm raised after signing",
         edit_signed(ptr, lambda d: d["rollout"].update(fraction_ppm=999_999)), None, device_id=outside)  # fmt: skip
    case("rollout-v1-schema", "reject", "rollout fields in a v1 pointer (re-signed)",
         sign_pointer(new, [channel], version="1.1.0", rollout=at10, edit=lambda d: d.update(schema=SCHEMA_ID)),
         None, device_id=inside)  # fmt: skip
    case("rollout-fraction-full", "reject", "fraction_ppm 1000000 is not a staged rollout (re-signed)",
         sign_pointer(new, [channel], version="1.1.0", rollout=at10,
                      edit=lambda d: d["rollout"].update(fraction_ppm=1_000_000)), None, device_id=inside)  # fmt: skip
    case("rollout-fallback-path", "reject", "the fallback's path is not the layout's (re-signed)",
         sign_pointer(new, [channel], version="1.1.0", rollout=at10,
                      edit=lambda d: d["rollout"]["fallback"]["bundle"].update(path="models/x/evil.zip")),
         None)  # fmt: skip


def min_app_cases(case: Callable[..., None], channel: ec.EllipticCurvePrivateKey, new: Path, old: Path) -> None:
    """min_app_version on full and staged pointers."""
    needs5 = sign_pointer(new, [channel], version="1.1.0", min_app_version="5.9.0")
    case("min-app-ok", "accept", "app 5.9.0 meets min_app_version 5.9.0", needs5, new, app_version="5.9.0",
         expect_version="1.1.0")  # fmt: skip
    case("min-app-semver-order", "accept", "5.10.0 is newer than 5.9.0 (SemVer, not string order)", needs5, new,
         app_version="5.10.0", expect_version="1.1.0")  # fmt: skip
    case("min-app-too-old", "reject", "app 5.8.1 is older than min_app_version 5.9.0", needs5, None,
         app_version="5.8.1")  # fmt: skip
    case("min-app-unknown-app", "reject", "no app version to check min_app_version against", needs5, None)
    inside = device_in("1.1.0", 500_000)
    staged = sign_pointer(new, [channel], version="1.1.0", min_app_version="5.9.0",
                          rollout=staged_over(old, "1.0.0", 500_000))  # fmt: skip
    case("min-app-staged-fallback", "accept", "inside the rollout, but too old an app: the fallback 1.0.0",
         staged, old, device_id=inside, app_version="5.0.0", expect_version="1.0.0")  # fmt: skip
    both = sign_pointer(new, [channel], version="1.1.0", min_app_version="5.9.0",
                        rollout=staged_over(old, "1.0.0", 500_000, min_app_version="5.0.0"))  # fmt: skip
    case("min-app-fallback-too-old", "reject", "the app is too old for both releases", both, None,
         device_id=inside, app_version="4.0.0")  # fmt: skip
    case("min-app-edited", "reject", "min_app_version removed after signing",
         edit_signed(needs5, lambda d: d.pop("min_app_version")), None, app_version="1.0.0")  # fmt: skip


def trust_cases(
    case: Callable[..., None], out: Path, work: Path, channel1: ec.EllipticCurvePrivateKey,
    release1: ec.EllipticCurvePrivateKey,
) -> None:  # fmt: skip
    """Root rotation: v1 (root1, release, channel) -> v2 (root2, release2, channel2), and broken chains."""
    keys = out / "keys"
    names = ("root1", "root2", "channel2", "release2")
    priv = {n: load_private_key(generate_keypair(keys / f"{n}.pem")[0]) for n in names}
    pub = {n: k.public_key() for n, k in priv.items()}
    v1 = trust.make_root(1, root_keys=[pub["root1"]], release_keys=[release1.public_key()],
                         channel_keys=[channel1.public_key()])  # fmt: skip
    v2 = trust.make_root(2, root_keys=[pub["root2"]], release_keys=[pub["release2"]], channel_keys=[pub["channel2"]])
    v2_expired = trust.make_root(2, root_keys=[pub["root2"]], release_keys=[pub["release2"]],
                                 channel_keys=[pub["channel2"]], expires=PUBLISHED)  # fmt: skip
    v3 = trust.make_root(3, root_keys=[pub["root2"]], release_keys=[pub["release2"]], channel_keys=[pub["channel2"]])
    first = trust.sign_root(v1, [priv["root1"]])
    chains = {
        "rotated": {1: first, 2: trust.sign_root(v2, [priv["root1"], priv["root2"]])},
        "not-cosigned": {1: first, 2: trust.sign_root(v2, [priv["root2"]])},
        "skipped": {1: first, 2: trust.sign_root(v3, [priv["root1"], priv["root2"]])},
        "expired": {1: first, 2: trust.sign_root(v2_expired, [priv["root1"], priv["root2"]])},
    }
    for chain, files in chains.items():
        for n, data in files.items():
            (out / "chains" / chain).mkdir(parents=True, exist_ok=True)
            (out / "chains" / chain / f"{n}.root.json").write_bytes(data)
    bundle2 = build(out / "digits-1.2.0-android-release2.zip", "1.2.0", "android", keys / "release2.pem", work)
    by_old_release = build(work / "digits-1.2.0-old-release.zip", "1.2.0", "android", keys / "release.pem", work)
    ok = sign_pointer(bundle2, [priv["channel2"]], version="1.2.0", sequence=1)

    def rooted(chain: str, pin: str = "keys/root1.pub.pem") -> dict:
        return {"trust": {"pin": pin, "roots": f"chains/{chain}"}, "last_sequence": 0}

    case("root-rotated", "accept", "pin root1, walk to v2: channel2 and release2 are trusted", ok, bundle2,
         expect_version="1.2.0", **rooted("rotated"))  # fmt: skip
    case("root-rotated-pin-root-json", "accept", "pin the shipped trust/1.root.json instead of the key", ok, bundle2,
         expect_version="1.2.0", **rooted("rotated", "chains/rotated/1.root.json"))  # fmt: skip
    case("root-rotated-old-channel-key", "reject", "after rotation the old channel key no longer signs pointers",
         sign_pointer(bundle2, [channel1], version="1.2.0", sequence=1), None, **rooted("rotated"))  # fmt: skip
    case("root-rotated-old-release-key", "reject", "after rotation the old release key no longer signs bundles",
         sign_pointer(by_old_release, [priv["channel2"]], version="1.2.0", sequence=1), by_old_release,
         **rooted("rotated"))  # fmt: skip
    case("root-not-cosigned", "reject", "v2 is not signed by v1's root key", ok, None, **rooted("not-cosigned"))
    case("root-skipped-version", "reject", "trust/2.root.json says version 3", ok, None, **rooted("skipped"))
    case("root-expired", "reject", "the newest root has expired", ok, None, **rooted("expired"))
    case("root-unrotated-new-keys", "reject", "without v2 in the chain, channel2 is not trusted", ok, None,
         trust={"pin": "keys/root1.pub.pem", "roots": "chains/v1-only"}, last_sequence=0)  # fmt: skip
    (out / "chains" / "v1-only").mkdir()
    (out / "chains" / "v1-only" / "1.root.json").write_bytes(first)


def bucket_vectors() -> list[dict]:
    """Buckets every implementation of the rollout hash must reproduce (ASCII, UTF-8, 256-byte ids)."""
    ids = [f"device-{i:03d}" for i in range(40)]
    ids += ["00000000-0000-4000-8000-000000000000", "é", "设备-1", "📱 phone", "x" * 256, "é" * 128, " "]
    rows = [(MODEL, "stable", "1.1.0", d) for d in ids]
    rows += [(MODEL, "beta", "1.1.0", "device-000"), ("other", "stable", "2.0.0-rc.1+b7", "device-000")]
    keys = ("model", "channel", "version", "device_id")
    return [{**dict(zip(keys, row, strict=True)), "bucket": bucket(*row)} for row in rows]


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


class Verdict(NamedTuple):
    result: str  # accept | reject
    reason: str  # why it was rejected ("" when accepted)
    version: str  # the release accepted ("" when rejected)


def check_case(vectors_dir: Path, case: dict) -> Verdict:
    """mobex's own verdict on one case. The Python twin of Main.java."""
    vectors_dir = Path(vectors_dir)
    req = case["request"]
    now = datetime.fromtimestamp(case["now"], UTC)
    try:
        root = _case_root(vectors_dir, case, now)
        seen = {kid: {f"{req['model']}/{req['channel']}/{req['platform']}": {"sequence": case["last_sequence"],
                                                                            "sha256": None}}
                for kid in root.roles["channel"].keyids}  # fmt: skip
        choice = check_pointer(
            (vectors_dir / case["pointer"]).read_bytes(), root, model=req["model"], channel=req["channel"],
            platform=req["platform"], now=now, seen=seen, installed_version=case["installed_version"],
            device_id=case.get("device_id"), app_version=case.get("app_version"),
        ).choice  # fmt: skip
        if case["bundle"]:
            bundle = vectors_dir / case["bundle"]
            data = bundle.read_bytes()
            if len(data) != choice.bundle.size or hashlib.sha256(data).hexdigest() != choice.bundle.sha256:
                return Verdict("reject", "archive size or sha256 differs from the pointer", "")
            trust.verify_release_bundle(
                bundle, root, expect_name=req["model"], expect_version=choice.version, expect_platform=req["platform"]
            )
    except MobexError as exc:
        return Verdict("reject", exc.message, "")
    return Verdict("accept", "", choice.version)


def _case_root(vectors_dir: Path, case: dict, now: datetime) -> trust.Root:
    """The pinned keys as a root, or the pin walked along the case's roots folder."""
    from mobex.bundle.keys import load_public_key

    if "trust" not in case:
        channel_pub = load_public_key(vectors_dir / case["channel_key"])
        release_pub = load_public_key(vectors_dir / case["release_key"])
        return trust.make_root(1, root_keys=[release_pub], release_keys=[release_pub], channel_keys=[channel_pub])
    roots = vectors_dir / case["trust"]["roots"]

    def fetch(rel: str) -> bytes | None:
        path = roots / Path(rel).name
        return path.read_bytes() if path.is_file() else None

    return trust.resolve(fetch, trust.load_pin(vectors_dir / case["trust"]["pin"]), now=now)


def agrees(case: dict, verdict: Verdict) -> bool:
    """The verdict is the expected one (and, for an accept, installs the expected version)."""
    if verdict.result != case["expect"]:
        return False
    return verdict.result == "reject" or case.get("expect_version", verdict.version) == verdict.version


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the vectors (new or empty)")
    args = parser.parse_args(argv)
    path = generate(args.out)
    cases = json.loads(path.read_text())["cases"]
    bad = [c["name"] for c in cases if not agrees(c, check_case(args.out, c))]
    print(f"{len(cases)} vectors in {args.out}; mobex agrees with {len(cases) - len(bad)}")
    if bad:
        print("disagreements: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
