"""Staged rollouts and min_app_version: the bucketing hash, the choice per device, and pulls over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mobex.bundle.keys import load_private_key, load_public_key
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, layout, publish, trust
from mobex.registry.pointer import SCHEMA_ID, SCHEMA_V2, BundleRef, Pointer, Release, Rollout, new_pointer
from mobex.registry.pull import check_pointer, pull, read_state
from mobex.registry.rollout import NotEligible, bucket, describe, parse_fraction, select

from .conftest import tree_snapshot

DEVICES = [f"device-{i:03d}" for i in range(100)]
STABLE = layout.pointer_path("digits", "stable", "android")
NOW = datetime(2026, 3, 1, tzinfo=UTC)


def ref(version: str, fill: str) -> BundleRef:
    return BundleRef(path=layout.bundle_path("digits", version, "android"), sha256=fill * 64, size=100)


def staged(ppm: int = 100_000, min_app: str | None = None, fallback_min_app: str | None = None) -> Pointer:
    """digits 1.1.0 to `ppm` of stable, the others keep 1.0.0."""
    return new_pointer(
        model="digits", channel="stable", platform="android", sequence=5, version="1.1.0", sha256="b" * 64,
        size=100, now=NOW, expires_in=timedelta(days=14), min_app_version=min_app,
        rollout=Rollout(fraction_ppm=ppm, fallback=Release(version="1.0.0", bundle=ref("1.0.0", "a"),
                                                          min_app_version=fallback_min_app)),
    )  # fmt: skip


# --- the bucketing hash --------------------------------------------------------------------------


def test_bucket_is_the_documented_hash() -> None:
    """SHA-256 over the documented bytes, first 8 bytes big-endian, mod 1e6: what an app recomputes."""
    message = b"mobex-rollout-v1\ndigits\nstable\n1.1.0\n" + "device-é".encode()
    expected = int.from_bytes(hashlib.sha256(message).digest()[:8], "big") % 1_000_000
    assert bucket("digits", "stable", "1.1.0", "device-é") == expected
    # known answers (also in docs/registry.md), so a change of the definition cannot pass unnoticed: apps ship it
    assert bucket("digits", "stable", "1.1.0", "device-000") == 336298
    assert bucket("digits", "stable", "1.1.0", "00000000-0000-4000-8000-000000000000") == 262002


def test_100_devices_split_about_10_90_and_raising_the_fraction_only_adds_devices() -> None:
    at = {ppm: {d for d in DEVICES if bucket("digits", "stable", "1.1.0", d) < ppm} for ppm in (100_000, 500_000)}
    assert 4 <= len(at[100_000]) <= 18, len(at[100_000])  # binomial(100, 0.1): 99.7 % inside
    assert 35 <= len(at[500_000]) <= 65, len(at[500_000])
    assert at[100_000] <= at[500_000]
    assert [bucket("digits", "stable", "1.1.0", d) for d in DEVICES] == [
        bucket("digits", "stable", "1.1.0", d) for d in DEVICES
    ]
    # another version (or channel, or model) draws other devices
    other = {d for d in DEVICES if bucket("digits", "stable", "1.2.0", d) < 100_000}
    assert other != at[100_000]


def test_bad_device_ids_are_usage_errors() -> None:
    for bad in ("", "x" * 257, "a\nb", "tab\there", "\x7f"):
        with pytest.raises(UsageError):
            bucket("digits", "stable", "1.1.0", bad)
    assert 0 <= bucket("digits", "stable", "1.1.0", "é" * 128) < 1_000_000  # 256 bytes is allowed


@pytest.mark.parametrize(
    "text, ppm",
    [("0.1", 100_000), ("10%", 100_000), ("1", 1_000_000), ("100%", 1_000_000), ("0.000001", 1), ("0.5%", 5000)],
)
def test_fractions(text: str, ppm: int) -> None:
    assert parse_fraction(text) == ppm


@pytest.mark.parametrize("bad", ["0", "0%", "-0.1", "1.5", "101%", "abc", "nan", "inf", "0.0000001", ""])
def test_bad_fractions(bad: str) -> None:
    with pytest.raises(UsageError):
        parse_fraction(bad)


def test_describe() -> None:
    assert [describe(p) for p in (100_000, 5000, 1, 999_999)] == ["10%", "0.5%", "0.0001%", "99.9999%"]


# --- the choice per device and app ---------------------------------------------------------------


def test_select_by_bucket_and_without_a_device_id() -> None:
    ptr = staged()
    inside = next(d for d in DEVICES if bucket("digits", "stable", "1.1.0", d) < 100_000)
    outside = next(d for d in DEVICES if bucket("digits", "stable", "1.1.0", d) >= 100_000)
    assert (select(ptr, inside, None).version, select(ptr, inside, None).reason) == ("1.1.0", "in-rollout")
    got = select(ptr, outside, None)
    assert (got.version, got.reason, got.bundle.sha256) == ("1.0.0", "outside-rollout", "a" * 64)
    assert (select(ptr, None, None).version, select(ptr, None, None).reason) == ("1.0.0", "no-device-id")
    full = new_pointer(
        model="digits", channel="stable", platform="android", sequence=5, version="1.1.0", sha256="b" * 64,
        size=100, now=NOW, expires_in=timedelta(days=1),
    )  # fmt: skip
    assert select(full, None, None).reason == "full"


def test_min_app_version_gives_the_fallback_or_a_refusal() -> None:
    inside = next(d for d in DEVICES if bucket("digits", "stable", "1.1.0", d) < 500_000)
    ptr = staged(500_000, min_app="5.2.0")
    assert select(ptr, inside, "5.2.0").version == "1.1.0"
    assert select(ptr, inside, "5.10.0").version == "1.1.0"  # SemVer, not string, order
    old = select(ptr, inside, "5.1.9")
    assert (old.version, old.reason) == ("1.0.0", "app-too-old")
    with pytest.raises(UsageError, match="needs app version 5.2.0 or later.*"):
        select(ptr, inside, None)
    both = staged(500_000, min_app="5.2.0", fallback_min_app="5.0.0")
    with pytest.raises(NotEligible, match="app version 4.9.0 may install") as info:
        select(both, inside, "4.9.0")
    assert info.value.exit_code == 7
    full = new_pointer(
        model="digits", channel="stable", platform="android", sequence=5, version="1.1.0", sha256="b" * 64,
        size=100, now=NOW, expires_in=timedelta(days=1), min_app_version="2.0.0",
    )  # fmt: skip
    with pytest.raises(NotEligible, match="needs 2.0.0 or later"):
        select(full, None, "1.9.0")


# --- the signed pointer --------------------------------------------------------------------------


def test_pointers_without_the_new_fields_keep_schema_v1_and_their_bytes() -> None:
    full = new_pointer(
        model="digits", channel="stable", platform="android", sequence=5, version="1.1.0", sha256="b" * 64,
        size=100, now=NOW, expires_in=timedelta(days=1),
    )  # fmt: skip
    doc = json.loads(full.to_payload())
    assert doc["schema"] == SCHEMA_ID and set(doc) == {
        "schema", "model", "channel", "platform", "sequence", "version", "bundle", "published", "expires", "downgrade",
    }  # fmt: skip
    doc = json.loads(staged(min_app="5.2.0").to_payload())
    assert doc["schema"] == SCHEMA_V2 and doc["min_app_version"] == "5.2.0"
    assert doc["rollout"] == {
        "fraction_ppm": 100_000,
        "fallback": {"version": "1.0.0", "bundle": json.loads(ref("1.0.0", "a").model_dump_json())},
    }
    assert Pointer.from_payload(staged(min_app="5.2.0").to_payload()) == staged(min_app="5.2.0")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.update(schema=SCHEMA_ID), "need schema"),
        (lambda d: d["rollout"].update(fraction_ppm=0), "fraction_ppm"),
        (lambda d: d["rollout"].update(fraction_ppm=1_000_000), "fraction_ppm"),
        (lambda d: d["rollout"].update(fraction_ppm=0.5), "fraction_ppm"),
        (lambda d: d["rollout"]["fallback"].update(version="1.2.0", bundle={**d["rollout"]["fallback"]["bundle"],
         "path": layout.bundle_path("digits", "1.2.0", "android")}), "must be older"),
        (lambda d: d["rollout"]["fallback"]["bundle"].update(path=layout.bundle_path("x", "1.0.0", "android")),
         "fallback.bundle.path"),
        (lambda d: d.update(min_app_version="5.2"), "SemVer"),
        (lambda d: d["rollout"]["fallback"].update(min_app_version=5), "min_app_version"),
        (lambda d: d["rollout"].update(extra=1), "extra"),
    ],
)  # fmt: skip
def test_invalid_staged_pointers_are_refused(edit, message) -> None:
    doc = json.loads(staged(min_app="5.2.0").to_payload())
    edit(doc)
    with pytest.raises(VerificationError, match=message):
        Pointer.from_payload(json.dumps(doc).encode())


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["rollout"].update(fraction_ppm=999_999),
        lambda d: d.pop("min_app_version"),
        lambda d: d["rollout"]["fallback"]["bundle"].update(sha256="c" * 64),
        lambda d: d.pop("rollout") and d.update(schema=SCHEMA_V2),
    ],
)
def test_the_signature_covers_the_new_fields(keypair, edit) -> None:
    signer = load_private_key(keypair[0])
    root = trust.pinned_root(signer.public_key())
    envelope = dsse.sign(dsse.POINTER_TYPE, staged(min_app="5.2.0").to_payload(), [signer])
    kwargs = dict(model="digits", channel="stable", platform="android", now=NOW, app_version="5.2.0")
    assert check_pointer(envelope, root, **kwargs).pointer.rollout is not None
    env = json.loads(envelope)
    doc = json.loads(base64.b64decode(env["payload"]))
    edit(doc)
    env["payload"] = base64.b64encode(dsse.dumps_canonical(doc)).decode()
    with pytest.raises(VerificationError, match="not signed by a trusted key"):
        check_pointer(json.dumps(env).encode(), root, **kwargs)


# --- publish, promote, rollback, refresh ---------------------------------------------------------


@pytest.fixture
def reg(tmp_path: Path, bundle_factory, keypair) -> Path:
    """digits 1.0.0 on stable (every device), 1.1.0 on beta."""
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "stable", keypair[0])
    publish.publish(bundle_factory("1.1.0"), reg, "beta", keypair[0], min_app_version="5.0.0")
    return reg


def stable_of(reg: Path) -> Pointer:
    return publish.read_pointer(reg, "digits", "stable", "android")


def test_promote_in_stages_then_fully(reg: Path, keypair) -> None:
    [change] = publish.promote("digits", reg, "beta", "stable", keypair[0], rollout="10%")
    assert (change.version, change.rollout_ppm, change.fallback_version, change.min_app_version) == (
        "1.1.0", 100_000, "1.0.0", "5.0.0",
    )  # fmt: skip
    ptr = stable_of(reg)
    old = (reg / layout.bundle_path("digits", "1.0.0", "android")).read_bytes()
    assert ptr.rollout.fallback.bundle.sha256 == hashlib.sha256(old).hexdigest()
    assert ptr.rollout.fallback.bundle.size == len(old) and ptr.min_app_version == "5.0.0"
    publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.5)
    assert stable_of(reg).rollout.fraction_ppm == 500_000 and stable_of(reg).rollout.fallback.version == "1.0.0"
    with pytest.raises(UsageError, match="would move devices back to 1.0.0"):
        publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.2)
    [refreshed] = publish.refresh("digits", reg, "stable", keypair[0])
    assert refreshed.rollout_ppm == 500_000 and stable_of(reg).rollout == publish.read_pointer(
        reg, "digits", "stable", "android").rollout  # fmt: skip
    [full] = publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=1)
    assert full.rollout_ppm is None and stable_of(reg).rollout is None and stable_of(reg).sequence == 5
    with pytest.raises(UsageError, match="ships 1.1.0 to every device"):
        publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.5)


def test_staged_rollout_refusals(reg: Path, bundle_factory, keypair) -> None:
    with pytest.raises(UsageError, match="ships nothing yet"):
        publish.promote("digits", reg, "beta", "canary", keypair[0], rollout=0.1)
    publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.1)
    publish.publish(bundle_factory("1.2.0"), reg, "beta", keypair[0])
    with pytest.raises(UsageError, match="still rolling out 1.1.0 to 10%"):
        publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.1)
    before = tree_snapshot(reg, skip=(layout.TMP_DIR, layout.LOCK_FILE))
    with pytest.raises(UsageError, match="still rolling out"):
        publish.publish(bundle_factory("1.3.0"), reg, "stable", keypair[0], rollout=0.1)
    assert tree_snapshot(reg, skip=(layout.TMP_DIR, layout.LOCK_FILE)) == before  # nothing half-written
    # a full move is allowed, and so is a staged publish on top of it
    publish.promote("digits", reg, "beta", "stable", keypair[0])
    result = publish.publish(bundle_factory("1.3.0"), reg, "stable", keypair[0], rollout=0.25, min_app_version="6.0.0")
    assert (result.pointer.rollout_ppm, result.pointer.fallback_version) == (250_000, "1.2.0")
    with pytest.raises(UsageError, match="not a fraction"):
        publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0)


def test_rollback_ends_a_rollout_and_keeps_the_recorded_min_app_version(tmp_path: Path, bundle_factory, keypair):
    reg = tmp_path / "reg"
    publish.publish(bundle_factory("1.0.0"), reg, "stable", keypair[0], min_app_version="4.0.0")
    publish.publish(bundle_factory("1.1.0"), reg, "stable", keypair[0], rollout=0.1)
    assert stable_of(reg).rollout.fallback.min_app_version == "4.0.0"
    [change] = publish.rollback("digits", reg, "stable", "1.0.0", keypair[0])
    ptr = stable_of(reg)
    assert (ptr.version, ptr.rollout, ptr.downgrade, ptr.min_app_version) == ("1.0.0", None, True, "4.0.0")
    assert change.min_app_version == "4.0.0"


# --- pulls over real HTTP (RegistryServer on 127.0.0.1) -----------------------------------------


def pull_all(url: str, pub: Path, base: Path, devices: list[str], **kw) -> dict[str, str]:
    return {d: pull("digits", url, "stable", "android", pub, base / d, device_id=d, **kw).version for d in devices}


@pytest.mark.parametrize("count", [20, pytest.param(100, marks=pytest.mark.slow)])  # 100: about 12 s
def test_devices_over_http_stay_on_their_side_and_the_raise_only_adds(
    tmp_path: Path, reg: Path, keypair, server_factory, count: int
) -> None:
    devices = DEVICES[:count]
    url = server_factory(reg).url
    publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.1)
    first = pull_all(url, keypair[1], tmp_path / "dev", devices, app_version="5.0.0")
    early = {d for d, v in first.items() if v == "1.1.0"}
    assert early == {d for d in devices if bucket("digits", "stable", "1.1.0", d) < 100_000}
    assert set(first.values()) == {"1.0.0", "1.1.0"}
    if count == 100:
        assert 4 <= len(early) <= 18  # about 10/90 (binomial(100, 0.1): 99.7 % inside)
    again = pull_all(url, keypair[1], tmp_path / "dev", devices, app_version="5.0.0")
    assert again == first  # the same answer on every pull
    publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.5)
    half = pull_all(url, keypair[1], tmp_path / "dev", devices, app_version="5.0.0")
    late = {d for d, v in half.items() if v == "1.1.0"}
    assert early < late == {d for d in devices if bucket("digits", "stable", "1.1.0", d) < 500_000}
    if count == 100:
        assert 35 <= len(late) <= 65
    assert read_state(tmp_path / "dev" / sorted(early)[0])["installed"]["version"] == "1.1.0"


def test_pull_without_device_id_and_with_an_old_app(tmp_path: Path, reg: Path, keypair, server_factory) -> None:
    url = server_factory(reg).url
    publish.promote("digits", reg, "beta", "stable", keypair[0], rollout=0.5)
    got = pull("digits", url, "stable", "android", keypair[1], tmp_path / "ci")
    assert (got.version, got.selected, got.pointer_version) == ("1.0.0", "no-device-id", "1.1.0")
    assert got.rollout_ppm == 500_000
    inside = next(d for d in DEVICES if bucket("digits", "stable", "1.1.0", d) < 500_000)
    with pytest.raises(UsageError, match="pass --app-version"):
        pull("digits", url, "stable", "android", keypair[1], tmp_path / "a", device_id=inside)
    old = pull("digits", url, "stable", "android", keypair[1], tmp_path / "a", device_id=inside, app_version="4.2.0")
    assert (old.version, old.selected) == ("1.0.0", "app-too-old")
    new = pull("digits", url, "stable", "android", keypair[1], tmp_path / "a", device_id=inside, app_version="5.0.0")
    assert (new.version, new.selected, new.previous_version) == ("1.1.0", "in-rollout", "1.0.0")
    # once on 1.1.0, the same folder asked as an old app would go back to 1.0.0: refused, 1.1.0 kept
    with pytest.raises(VerificationError, match=r"app-too-old of 1.1.0\), older than the installed 1.1.0.*keeping"):
        pull("digits", url, "stable", "android", keypair[1], tmp_path / "a", device_id=inside, app_version="4.2.0")


def test_a_forged_lower_fraction_cannot_move_devices_back(tmp_path: Path, split_keys, server_factory) -> None:
    """A stolen channel key re-signs the rollout at 1 ppm: devices that have 1.1.0 refuse the silent downgrade."""
    reg, keys = split_keys
    url = server_factory(reg).url
    inside = next(d for d in DEVICES if bucket("digits", "stable", "1.1.0", d) < 500_000)
    out = tmp_path / "dev"
    assert pull("digits", url, "stable", "android", keys["root"][1], out, device_id=inside).version == "1.1.0"
    ptr = stable_of(reg)
    forged = ptr.model_copy(update={"sequence": ptr.sequence + 1, "rollout": ptr.rollout.model_copy(
        update={"fraction_ppm": 1})})  # fmt: skip
    thief = load_private_key(keys["channel"][0])
    (reg / STABLE).write_bytes(dsse.sign(dsse.POINTER_TYPE, forged.to_payload(), [thief]))
    with pytest.raises(VerificationError, match="outside-rollout of 1.1.0\\), older than the installed 1.1.0"):
        pull("digits", url, "stable", "android", keys["root"][1], out, device_id=inside)
    assert json.loads((out / "current" / "manifest.json").read_bytes())["version"] == "1.1.0"
    assert dsse.keyid_of(load_public_key(keys["channel"][1])) in read_state(out)["sequences"]


@pytest.fixture
def split_keys(tmp_path: Path, bundle_factory) -> tuple[Path, dict]:
    """Separate root, release and channel keys; stable rolls 1.1.0 out to half of the devices over 1.0.0."""
    from mobex.bundle.keys import generate_keypair

    keys = {n: generate_keypair(tmp_path / "keys" / f"{n}.pem") for n in ("root", "release", "channel")}
    reg = tmp_path / "split"
    trust.init_root(reg, keys["root"][0], release_keys=[keys["release"][1]], channel_keys=[keys["channel"][1]])
    publish.publish(bundle_factory("1.0.0", key=keys["release"][0]), reg, "stable", keys["channel"][0])
    publish.publish(bundle_factory("1.1.0", key=keys["release"][0]), reg, "stable", keys["channel"][0], rollout=0.5)
    return reg, keys


def test_a_bad_app_version_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="SemVer"):
        select(staged(min_app="5.2.0"), None, "5.2")


def test_an_old_pointer_payload_still_parses_and_round_trips_byte_for_byte() -> None:
    old = {  # what mobex wrote before rollouts existed
        "schema": SCHEMA_ID, "model": "digits", "channel": "stable", "platform": "android", "sequence": 42,
        "version": "1.4.2", "bundle": {"path": layout.bundle_path("digits", "1.4.2", "android"), "sha256": "c" * 64,
                                       "size": 4321987},
        "published": "2026-11-20T12:05:00Z", "expires": "2026-12-04T12:05:00Z", "downgrade": False,
    }  # fmt: skip
    payload = dsse.dumps_canonical(old)
    ptr = Pointer.from_payload(payload)
    assert (ptr.rollout, ptr.min_app_version) == (None, None) and ptr.to_payload() == payload
    assert select(ptr, "any-device", None).reason == "full"
