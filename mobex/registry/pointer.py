"""The channel pointer: the small signed file that says which bundle a channel ships right now.

```json
{"schema": "https://mobex.dev/schemas/channel-pointer/v1",
 "model": "digits", "channel": "stable", "platform": "android",
 "sequence": 42, "version": "1.4.2",
 "bundle": {"path": "models/digits/versions/1.4.2/digits-1.4.2-android.zip", "sha256": "<hex>", "size": 4321987},
 "published": "2026-11-20T12:05:00Z", "expires": "2026-12-04T12:05:00Z", "downgrade": false}
```

A pointer may also carry `min_app_version` (apps older than it do not get this version) and a
staged `rollout`: `{"fraction_ppm": 100000, "fallback": {"version", "bundle", "min_app_version"?}}`,
the fallback being what devices outside the rollout get (see `mobex.registry.rollout`). A pointer
with either field says schema `.../channel-pointer/v2`, so that clients which predate them refuse
it (and keep their installed bundle) instead of ignoring a constraint; a pointer without them is
byte-for-byte what it was before (schema v1), and v1 pointers never carry them.

It travels as the payload of a DSSE envelope (payloadType `application/vnd.mobex.channel-pointer+json`).
Every field is authenticated, so the client can check that the pointer is for the model, channel
and platform it asked for (no swapping one channel's pointer for another's), that it has not expired
(no indefinite freeze), that its sequence has not gone back (no replay of an old pointer), and that
the archive it downloads has exactly this size and digest (no tampering, no endless data).
`bundle.path` must be the layout's path for (model, version, platform), so a pointer cannot send
the client anywhere else. `downgrade: true` marks a pointer to a lower version than before; clients
accept it only with a release-key signature as well as a channel-key signature.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from mobex.errors import UsageError, VerificationError
from mobex.names import SEMVER_RE
from mobex.registry import dsse, layout

SCHEMA_ID = "https://mobex.dev/schemas/channel-pointer/v1"
SCHEMA_V2 = "https://mobex.dev/schemas/channel-pointer/v2"  # with min_app_version and/or rollout
FULL_PPM = 1_000_000
MAX_SEQUENCE = (1 << 53) - 1  # exact in every JSON implementation
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", re.ASCII)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    if not isinstance(s, str) or not _TIME_RE.fullmatch(s):
        raise ValueError(f"time {s!r} must look like 2026-01-31T12:00:00Z")
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def _semver_or_none(v: str | None) -> str | None:
    if v is not None and not SEMVER_RE.match(v):
        raise ValueError(f"{v!r} is not SemVer 2.0")
    return v


class BundleRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: StrictStr
    sha256: StrictStr
    size: StrictInt = Field(ge=1, le=1 << 50)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA_RE.fullmatch(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class Release(BaseModel):
    """A version and its bundle: a staged pointer's fallback (what devices outside the rollout get)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: StrictStr
    bundle: BundleRef
    min_app_version: StrictStr | None = None

    _semver = field_validator("version", "min_app_version")(classmethod(lambda cls, v: _semver_or_none(v)))


class Rollout(BaseModel):
    """A staged rollout: devices whose bucket is below `fraction_ppm` get the pointer's version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fraction_ppm: StrictInt = Field(ge=1, le=FULL_PPM - 1)
    fallback: Release


class Pointer(BaseModel):
    """A channel pointer payload; construct with keyword arguments, or parse with `Pointer.from_payload`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: StrictStr = Field(default=SCHEMA_ID, alias="schema")
    model: StrictStr
    channel: StrictStr
    platform: Literal["android", "ios"]
    sequence: StrictInt = Field(ge=1, le=MAX_SEQUENCE)
    version: StrictStr
    bundle: BundleRef
    published: StrictStr
    expires: StrictStr
    downgrade: StrictBool = False
    min_app_version: StrictStr | None = None
    rollout: Rollout | None = None

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v not in (SCHEMA_ID, SCHEMA_V2):
            raise ValueError(f"unsupported pointer schema {v!r}")
        return v

    _min_app = field_validator("min_app_version")(classmethod(lambda cls, v: _semver_or_none(v)))

    @field_validator("published", "expires")
    @classmethod
    def _time(cls, v: str) -> str:
        parse_time(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Pointer:
        layout.check_name(self.model)
        layout.check_channel(self.channel)
        layout.check_version(self.version)
        expected = layout.bundle_path(self.model, self.version, self.platform)
        if self.bundle.path != expected:
            raise ValueError(f"bundle.path {self.bundle.path!r} is not the layout's {expected!r}")
        if parse_time(self.expires) <= parse_time(self.published):
            raise ValueError("expires must be after published")
        if self.schema_ == SCHEMA_ID and (self.rollout is not None or self.min_app_version is not None):
            raise ValueError(f"rollout and min_app_version need schema {SCHEMA_V2}")
        if self.rollout is not None:
            fb = self.rollout.fallback
            expected = layout.bundle_path(self.model, fb.version, self.platform)
            if fb.bundle.path != expected:
                raise ValueError(f"rollout.fallback.bundle.path {fb.bundle.path!r} is not the layout's {expected!r}")
            if semver_key(fb.version) >= semver_key(self.version):
                raise ValueError(f"rollout.fallback {fb.version} must be older than the rolled-out {self.version}")
        return self

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires)

    def to_payload(self) -> bytes:
        return dsse.dumps_canonical(self.model_dump(mode="json", by_alias=True, exclude_none=True))

    def release(self) -> Release:
        """This pointer's own version as a Release (what a later staged pointer falls back to)."""
        return Release(version=self.version, bundle=self.bundle, min_app_version=self.min_app_version)

    @classmethod
    def from_payload(cls, payload: bytes, what: str = "channel pointer") -> Pointer:
        """Parse a pointer payload; VerificationError (never a crash) if it is malformed."""
        try:
            return cls.model_validate(dsse.loads_strict(payload))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err.get("loc", ())) or "pointer"
            raise VerificationError(f"{what} is invalid: {loc}: {err.get('msg')}") from exc
        except Exception as exc:  # UsageError from layout checks, JSON errors
            raise VerificationError(f"{what} is invalid: {getattr(exc, 'message', exc)}") from exc


def new_pointer(
    *,
    model: str,
    channel: str,
    platform: str,
    sequence: int,
    version: str,
    sha256: str,
    size: int,
    now: datetime,
    expires_in: timedelta,
    downgrade: bool = False,
    min_app_version: str | None = None,
    rollout: Rollout | None = None,
) -> Pointer:
    """A pointer published at `now` (rounded down to the second) that expires `expires_in` later.

    Schema v2 only when it carries `min_app_version` or `rollout`; otherwise v1, as before.
    """
    now = now.astimezone(UTC).replace(microsecond=0)
    return Pointer(
        schema=SCHEMA_V2 if (min_app_version is not None or rollout is not None) else SCHEMA_ID,
        model=model,
        channel=channel,
        platform=platform,  # type: ignore[arg-type]
        sequence=sequence,
        version=version,
        bundle=BundleRef(path=layout.bundle_path(model, version, platform), sha256=sha256, size=size),
        published=format_time(now),
        expires=format_time(now + expires_in),
        downgrade=downgrade,
        min_app_version=min_app_version,
        rollout=rollout,
    )


def semver_key(version: str) -> tuple:
    """Sort key for SemVer 2.0 precedence (build metadata ignored; pre-releases before the release)."""
    m = SEMVER_RE.fullmatch(version)
    if not m:
        raise ValueError(f"{version!r} is not SemVer")
    major, minor, patch, pre = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    if pre is None:
        return (major, minor, patch, 1, ())
    ids = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split("."))
    return (major, minor, patch, 0, ids)


def parse_duration(text: str) -> timedelta:
    """'14d', '12h', '30m', '90s' -> timedelta (for --expires)."""
    m = re.fullmatch(r"\s*(\d{1,6})\s*([dhms])\s*", text or "")
    if not m:
        raise UsageError(f"duration {text!r} is not valid", hint="use a number and a unit: 14d, 12h, 30m or 90s")
    n, unit = int(m.group(1)), m.group(2)
    delta = timedelta(seconds=n * {"d": 86400, "h": 3600, "m": 60, "s": 1}[unit])
    if delta <= timedelta(0):
        raise UsageError(f"duration {text!r} must be positive")
    return delta
