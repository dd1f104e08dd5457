from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from mobex.errors import UsageError, VerificationError
from mobex.registry import layout
from mobex.registry.pointer import Pointer, new_pointer, parse_duration, semver_key

NOW = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
SHA = "ab" * 32


def make(**over) -> Pointer:
    fields = dict(
        model="digits", channel="stable", platform="android", sequence=7, version="1.4.2",
        sha256=SHA, size=1234, now=NOW, expires_in=timedelta(days=14),
    )  # fmt: skip
    fields.update(over)
    return new_pointer(**fields)


def test_round_trip_and_canonical_payload() -> None:
    ptr = make()
    payload = ptr.to_payload()
    assert payload.endswith(b"\n") and b" " not in payload  # compact, sorted, one line
    doc = json.loads(payload)
    assert list(doc) == sorted(doc)
    assert doc["bundle"]["path"] == "models/digits/versions/1.4.2/digits-1.4.2-android.zip"
    assert doc["published"] == "2026-03-01T12:00:00Z" and doc["expires"] == "2026-03-15T12:00:00Z"
    assert doc["downgrade"] is False and doc["schema"] == "https://mobex.dev/schemas/channel-pointer/v1"
    assert Pointer.from_payload(payload) == ptr


def edited(**changes) -> bytes:
    doc = json.loads(make().to_payload())
    for dotted, value in changes.items():
        target = doc
        *parents, last = dotted.split(".")
        for p in parents:
            target = target[p]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"bundle.path": "models/digits/versions/1.4.2/../../../../etc/passwd"}, "bundle.path"),
        ({"bundle.path": "models/other/versions/1.4.2/other-1.4.2-android.zip"}, "bundle.path"),
        ({"version": "1.4"}, "SemVer"),
        ({"model": "../digits"}, "model name"),
        ({"channel": "Stable"}, "channel"),
        ({"platform": "windows"}, "platform"),
        ({"sequence": 0}, "sequence"),
        ({"sequence": "8"}, "sequence"),
        ({"sequence": True}, "sequence"),
        ({"sequence": 1 << 60}, "sequence"),
        ({"downgrade": "false"}, "downgrade"),
        ({"bundle.sha256": "AB" * 32}, "sha256"),
        ({"bundle.size": 0}, "size"),
        ({"expires": "2026-02-01T00:00:00Z"}, "expires must be after published"),
        ({"expires": "2026-13-01T00:00:00Z"}, "expires"),
        ({"expires": KeyError}, "expires"),
        ({"schema": "https://example.com/other"}, "schema"),
        ({"extra": 1}, "extra"),
    ],
)
def test_invalid_pointers_are_verification_errors(changes, message) -> None:
    with pytest.raises(VerificationError, match=message):
        Pointer.from_payload(edited(**changes))


def test_garbage_payloads_are_verification_errors() -> None:
    for payload in (b"", b"[]", b"null", b"\xff", b'{"a":1,"a":2}', b"{" * 5000):
        with pytest.raises(VerificationError):
            Pointer.from_payload(payload)


def test_semver_precedence_follows_semver_org() -> None:
    ordered = [
        "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0", "1.0.1", "1.1.0", "2.0.0", "10.0.0",
    ]  # fmt: skip
    assert sorted(ordered, key=semver_key) == ordered
    assert semver_key("1.0.0+build.5") == semver_key("1.0.0")


def test_durations() -> None:
    assert parse_duration("14d") == timedelta(days=14)
    assert parse_duration("90s") == timedelta(seconds=90)
    for bad in ("", "14", "d", "-1d", "0h", "1w"):
        with pytest.raises(UsageError):
            parse_duration(bad)


@pytest.mark.parametrize(
    "rel, kind",
    [
        ("trust/root.json", "root"),
        ("trust/12.root.json", "root-version"),
        ("index.json", "index"),
        ("models/digits/channels/stable/ios.json", "pointer"),
        ("models/digits/versions/1.0.0-rc.1+b7/digits-1.0.0-rc.1+b7-ios.zip", "bundle"),
        ("trust/0.root.json", None),
        ("trust/01.root.json", None),
        ("models/digits/versions/1.0.0/other-1.0.0-ios.zip", None),
        ("models/digits/versions/1.0.0/digits-1.0.1-ios.zip", None),
        ("models/digits/channels/stable/windows.json", None),
        ("models/../channels/stable/ios.json", None),
        (".mobex-registry.lock", None),
        (".mobex-journal.json", None),
        ("models/digits/versions/1.0.0/.digits-1.0.0-ios.zip.tmp", None),
        ("index.json/", None),
    ],
)
def test_layout_whitelist(rel, kind) -> None:
    found = layout.classify(rel)
    assert (found.kind if found else None) == kind


def test_layout_names_are_validated() -> None:
    assert layout.bundle_path("d", "1.0.0", "ios") == "models/d/versions/1.0.0/d-1.0.0-ios.zip"
    for bad in ("..", ".", "a/b", "", "-x", "x" * 129, "a\\b", "a b"):
        with pytest.raises(UsageError):
            layout.check_name(bad)
    for bad in ("1.0", "01.0.0", "1.0.0/..", "../1.0.0", "v1.0.0"):
        with pytest.raises(UsageError):
            layout.check_version(bad)
    for bad in ("Stable", "../x", "", "a" * 65):
        with pytest.raises(UsageError):
            layout.check_channel(bad)
