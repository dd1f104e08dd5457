#!/usr/bin/env python3
"""Generate conformance vectors for mobex pointer and bundle verifiers (Python, Java, Swift, ...).

Usage: python scripts/make_conformance_vectors.py OUT_DIR

OUT_DIR/vectors.json lists cases; each names a signed pointer file, an optional bundle zip, the
channel and release public keys to pin, the request (model, channel, platform), the verifier's
clock (`now`, Unix seconds), the last sequence it accepted (`last_sequence`), the installed version
(or null), and the expected outcome (`expect`: accept | reject) with the reason (`why`).

The valid cases are real bundles (`mobex.bundle.verify.build_bundle`) and real pointers signed as
the registry signs them; the rest each break one rule: a flipped byte, an extra or missing file,
`../` and absolute entries, a symlink entry, a duplicate entry, a bundle or pointer signed by
another key, a replayed or expired pointer, the wrong channel, platform or model, the wrong payload
type or predicate type, a blake3 hash type, an archive larger than its signed size, unflagged or
channel-only downgrades, a version that differs from the manifest, a pointer edited after signing.
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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mobex.artifacts import TensorSpec
from mobex.bundle.keys import generate_keypair, load_private_key
from mobex.bundle.manifest import Manifest, iso_utc, model_section
from mobex.bundle.verify import build_bundle
from mobex.errors import MobexError
from mobex.registry import dsse, trust
from mobex.registry.pointer import new_pointer
from mobex.registry.pull import check_pointer

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
) -> bytes:
    data = zip_path.read_bytes()
    ptr = new_pointer(
        model=model, channel=channel, platform=platform, sequence=sequence, version=version,
        sha256=hashlib.sha256(data).hexdigest(), size=len(data) + size_delta, now=PUBLISHED,
        expires_in=EXPIRES_IN, downgrade=downgrade,
    )  # fmt: skip
    return dsse.sign(payload_type, ptr.to_payload(), signers)


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
        # bundle tampering
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
        # pointer rules
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
        edited = json.loads(ok)
        payload = json.loads(base64.b64decode(edited["payload"]))
        payload["sequence"] = 99
        edited["payload"] = base64.b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
        case("pointer-edited", "reject", "payload changed after signing", json.dumps(edited).encode(), None)

    doc = {"schema": "https://mobex.dev/schemas/conformance-vectors/v1", "skew_seconds": 300, "cases": cases}
    path = out / "vectors.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def _symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(2023, 11, 14, 22, 13, 20))
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def check_case(vectors_dir: Path, case: dict) -> tuple[str, str]:
    """mobex's own verdict on one case: ("accept" | "reject", reason). The Python twin of Main.java."""
    from mobex.bundle.keys import load_public_key

    vectors_dir = Path(vectors_dir)
    channel_pub = load_public_key(vectors_dir / case["channel_key"])
    release_pub = load_public_key(vectors_dir / case["release_key"])
    root = trust.make_root(1, root_keys=[release_pub], release_keys=[release_pub], channel_keys=[channel_pub])
    req = case["request"]
    seen = {dsse.keyid_of(channel_pub): {f"{req['model']}/{req['channel']}/{req['platform']}": {
        "sequence": case["last_sequence"], "sha256": None}}}  # fmt: skip
    try:
        ptr, *_ = check_pointer(
            (vectors_dir / case["pointer"]).read_bytes(), root, model=req["model"], channel=req["channel"],
            platform=req["platform"], now=datetime.fromtimestamp(case["now"], UTC), seen=seen,
            installed_version=case["installed_version"],
        )  # fmt: skip
        if case["bundle"]:
            bundle = vectors_dir / case["bundle"]
            data = bundle.read_bytes()
            if len(data) != ptr.bundle.size or hashlib.sha256(data).hexdigest() != ptr.bundle.sha256:
                return "reject", "archive size or sha256 differs from the pointer"
            trust.verify_release_bundle(
                bundle, root, expect_name=ptr.model, expect_version=ptr.version, expect_platform=ptr.platform
            )
    except MobexError as exc:
        return "reject", exc.message
    return "accept", ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for the vectors (new or empty)")
    args = parser.parse_args(argv)
    path = generate(args.out)
    cases = json.loads(path.read_text())["cases"]
    bad = [c["name"] for c in cases if check_case(args.out, c)[0] != c["expect"]]
    print(f"{len(cases)} vectors in {args.out}; mobex agrees with {len(cases) - len(bad)}")
    if bad:
        print("disagreements: " + ", ".join(bad), file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
