"""Staged rollouts and `min_app_version`: which bundle of a channel pointer one device installs.

A pointer may ship its version to a fraction of devices only (`rollout.fraction_ppm`, parts per
million). Devices outside the fraction get `rollout.fallback`, the version the channel shipped
before, so a staged pointer always says what *every* device gets. Which side a device is on is
decided by a hash of a stable device id, the same on every pull and in every language:

    bucket = uint64_be(SHA-256("mobex-rollout-v1\\n" + model + "\\n" + channel + "\\n" + version
                               + "\\n" + device_id)[0:8]) mod 1_000_000
    in the rollout  <=>  bucket < fraction_ppm

(`+` concatenates UTF-8 bytes; `version` is the version being rolled out.) Raising the fraction
of one version only adds devices, since a device's bucket never changes; model, channel and
version names cannot contain a newline, so the byte string is unambiguous. A new version draws a
new set of early devices.

`min_app_version` (SemVer) on the pointer's version, or on its fallback, keeps a bundle from apps
too old to run it: such an app gets the fallback if that fits, and a `NotEligible` refusal
(exit 7) otherwise. Without an app version, a pull that meets a `min_app_version` is refused
(exit 2) rather than guessed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from mobex.errors import MobexError, UsageError

if TYPE_CHECKING:
    from mobex.registry.pointer import BundleRef, Pointer

PPM = 1_000_000
DOMAIN = b"mobex-rollout-v1\n"
MAX_DEVICE_ID_BYTES = 256


class NotEligible(MobexError):
    """The pointer ships nothing this app version may install (exit 7: update the app, or wait)."""

    exit_code = 7


@dataclass(frozen=True)
class Choice:
    """What one device installs from a pointer, and why (for results and messages)."""

    version: str
    bundle: BundleRef
    min_app_version: str | None
    reason: str  # "full" | "in-rollout" | "outside-rollout" | "no-device-id" | "app-too-old"

    @property
    def is_fallback(self) -> bool:
        return self.reason != "full" and self.reason != "in-rollout"


def check_device_id(device_id: str) -> str:
    """A device id: 1-256 UTF-8 bytes, no control characters (a random per-install UUID is ideal)."""
    if not isinstance(device_id, str) or not device_id:
        raise UsageError("--device-id must not be empty", hint="use a random id stored at install, e.g. a UUID")
    if len(device_id.encode("utf-8")) > MAX_DEVICE_ID_BYTES:
        raise UsageError(f"--device-id is longer than {MAX_DEVICE_ID_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in device_id):
        raise UsageError("--device-id contains a control character")
    return device_id


def bucket(model: str, channel: str, version: str, device_id: str) -> int:
    """The device's bucket in [0, 1_000_000) for this rollout (see the module docstring)."""
    message = DOMAIN + "\n".join((model, channel, version, check_device_id(device_id))).encode("utf-8")
    return int.from_bytes(hashlib.sha256(message).digest()[:8], "big") % PPM


def parse_fraction(text: str | float) -> int:
    """'0.1', '10%', '1' -> parts per million (exact: 0.0000001 is refused rather than rounded)."""
    raw = str(text).strip()
    try:
        value = Decimal(raw[:-1]) / 100 if raw.endswith("%") else Decimal(raw)
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or not 0 < value <= 1:
        raise UsageError(f"--rollout {raw!r} is not a fraction in (0, 1]", hint="e.g. --rollout 0.1 or --rollout 10%")
    ppm = value * PPM
    if ppm != ppm.to_integral_value():
        raise UsageError(f"--rollout {raw!r} is finer than one part per million")
    return int(ppm)


def describe(ppm: int) -> str:
    """10% / 0.5% / 0.0001%: a fraction in ppm as people write it."""
    text = f"{Decimal(ppm) / 10_000:f}"
    return (text.rstrip("0").rstrip(".") if "." in text else text) + "%"


def select(ptr: Pointer, device_id: str | None, app_version: str | None) -> Choice:
    """The pointer's version or its fallback, for this device and app (NotEligible if neither fits)."""
    from mobex.registry import layout
    from mobex.registry.pointer import semver_key

    if app_version is not None:
        layout.check_version(app_version)
    primary = Choice(ptr.version, ptr.bundle, ptr.min_app_version, "full")
    if ptr.rollout is None:
        candidates = [primary]
    else:
        fb = ptr.rollout.fallback
        fallback = Choice(fb.version, fb.bundle, fb.min_app_version, "outside-rollout")
        if device_id is None:
            candidates = [_with_reason(fallback, "no-device-id")]
        elif bucket(ptr.model, ptr.channel, ptr.version, device_id) < ptr.rollout.fraction_ppm:
            candidates = [_with_reason(primary, "in-rollout"), _with_reason(fallback, "app-too-old")]
        else:
            candidates = [fallback]
    for choice in candidates:
        if choice.min_app_version is None:
            return choice
        if app_version is None:
            raise UsageError(
                f"{ptr.model} {choice.version} needs app version {choice.min_app_version} or later",
                hint="pass --app-version with the version of the app that will load the model",
            )
        if semver_key(app_version) >= semver_key(choice.min_app_version):
            return choice
    needs = " or ".join(sorted({c.min_app_version or "" for c in candidates}))
    raise NotEligible(
        f"{ptr.model} {ptr.channel}/{ptr.platform} ships nothing app version {app_version} may install "
        f"(it needs {needs} or later)",
        hint="the installed bundle is kept; update the app to get the new model",
    )


def _with_reason(choice: Choice, reason: str) -> Choice:
    return Choice(choice.version, choice.bundle, choice.min_app_version, reason)
