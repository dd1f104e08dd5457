"""The channel pointer: the small signed file that says which bundle a channel ships right now.

```json
{"schema": "https://mobex.dev/schemas/channel-pointer/v1",
 "model": "digits", "channel": "stable", "platform": "android",
 "sequence": 42, "version": "1.4.2",
 "bundle": {"path": "models/digits/versions/1.4.2/digits-1.4.2-android.zip", "sha256": "<hex>", "size": 4321987},
 "published": "2026-11-20T12:05:00Z", "expires": "2026-12-04T12:05:00Z", "downgrade": false}
```

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

from mobex.bundle.manifest import SEMVER_RE
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, layout

SCHEMA_ID = "https://mobex.dev/schemas/channel-pointer/v1"
MAX_SEQUENCE = (1 << 53) - 1  # exact in every JSON implementation
_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", re.ASCII)
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


def format_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(s: str) -> datetime:
    if not isinstance(s, str) or not _TIME_RE.fullmatch(s):
        raise ValueError(f"time {s!r} must look like 2026-01-31T12:00:00Z")
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


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

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v != SCHEMA_ID:
            raise ValueError(f"unsupported pointer schema {v!r}")
        return v

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
        return self

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expires)

    def to_payload(self) -> bytes:
        return dsse.dumps_canonical(self.model_dump(mode="json", by_alias=True))

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
) -> Pointer:
    """A pointer published at `now` (rounded down to the second) that expires `expires_in` later."""
    now = now.astimezone(UTC).replace(microsecond=0)
    return Pointer(
        model=model,
        channel=channel,
        platform=platform,  # type: ignore[arg-type]
        sequence=sequence,
        version=version,
        bundle=BundleRef(path=layout.bundle_path(model, version, platform), sha256=sha256, size=size),
        published=format_time(now),
        expires=format_time(now + expires_in),
        downgrade=downgrade,
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
