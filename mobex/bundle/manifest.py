"""The bundle manifest (`manifest.json`): what an app needs to use the model, and what it must trust.

The signature covers the manifest, so everything here (version, I/O contract, metrics,
provenance) is as trustworthy as the model bytes. `files` lists every file except `manifest.json`
and the signature, with sha256 and size, and must equal what is actually in the bundle.

Serialization is canonical (sorted keys, indent 2, UTF-8, trailing newline), so a rebuild from the
same inputs yields identical bytes. JSON has no NaN/Infinity: non-finite floats (e.g. an infinite
SNR when outputs match exactly) are written as null, as JavaScript's JSON.stringify does.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mobex import plugins
from mobex.artifacts import TensorSpec
from mobex.bounded import loads_json
from mobex.bundle.signing import SIGNATURE_FILE
from mobex.errors import UsageError
from mobex.files import regular_files, sha256_file
from mobex.names import NAME_RE, SEMVER_RE

SCHEMA_ID = "https://mobex.dev/schemas/bundle-manifest/v1"
MANIFEST_FILE = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CREATED_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$", re.ASCII)
_REQUIRED_MODEL_KEYS = ("path", "format", "quantization", "inputs", "outputs", "minimum_os")


def check_relative_posix(path: str, what: str = "path") -> str:
    """A bundle-relative posix path: no '..', '.' or empty parts, no leading '/', no '\\' or ':'.

    ':' is refused anywhere (drive letters, NTFS streams); bundles never need it.
    """
    if not path or path.startswith("/") or "\\" in path or ":" in path:
        raise ValueError(f"{what} {path!r} must be a relative posix path (no leading '/', '\\' or ':')")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"{what} {path!r} has an empty, '.' or '..' component")
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise ValueError(f"{what} {path!r} contains control characters")
    return path


class FileEntry(BaseModel):
    """One file of the bundle: posix path relative to the bundle root, sha256 (hex) and size."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    sha256: str
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        return check_relative_posix(v)

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA256_RE.fullmatch(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class Manifest(BaseModel):
    """manifest.json. `model` holds path, format, quantization, inputs/outputs (TensorSpec dicts) and
    minimum_os ({"ios": "iOS16"} or {"android_min_sdk": 24}); see `model_section`."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    schema_: str = Field(default=SCHEMA_ID, alias="schema")
    name: str
    version: str
    platform: Literal["android", "ios"]
    created: str
    files: list[FileEntry] = Field(default_factory=list)
    model: dict[str, Any]
    labels: list[str] | None = None
    preprocessing: dict[str, Any] = Field(default_factory=dict)
    task: str
    metrics: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v != SCHEMA_ID:
            raise ValueError(f"unsupported manifest schema {v!r}; this mobex reads {SCHEMA_ID}")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_RE.fullmatch(v):
            raise ValueError(
                f"bundle name {v!r} must be 1-128 of letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not SEMVER_RE.fullmatch(v):
            raise ValueError(f"version {v!r} is not SemVer 2.0 (e.g. 1.4.2, 2.0.0-rc.1)")
        return v

    @field_validator("created")
    @classmethod
    def _created(cls, v: str) -> str:
        if not _CREATED_RE.fullmatch(v):
            raise ValueError(f"created {v!r} must be an ISO-8601 UTC time like 2026-01-31T12:00:00Z")
        datetime.strptime(v, "%Y-%m-%dT%H:%M:%SZ")  # rejects month 13 etc.
        return v

    @field_validator("task")
    @classmethod
    def _task(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("task must not be empty (classification, regression, embedding or other)")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: dict[str, Any]) -> dict[str, Any]:
        v = _finite(v)
        missing = [k for k in _REQUIRED_MODEL_KEYS if k not in v]
        if missing:
            raise ValueError(f"model section lacks {', '.join(missing)}")
        path = check_relative_posix(str(v["path"]), "model.path")
        if not path.startswith("model/"):
            raise ValueError(f"model.path {path!r} must be under model/")
        fmt = v["format"]
        if plugins.target_for_format(fmt) is None:
            known = ", ".join(repr(t.file_format) for t in plugins.targets())
            raise ValueError(f"model.format {fmt!r} must be one of {known}")
        if not path.endswith("." + fmt):
            raise ValueError(f"model.path {path!r} must end in .{fmt}")
        for key in ("inputs", "outputs"):
            specs = v[key]
            if not isinstance(specs, list) or not specs:
                raise ValueError(f"model.{key} must be a non-empty list of tensor specs")
            for i, spec in enumerate(specs):
                _check_tensor_spec(spec, f"model.{key}[{i}]")
        if not isinstance(v["minimum_os"], dict) or not v["minimum_os"]:
            raise ValueError('model.minimum_os must be {"ios": "iOS16"} or {"android_min_sdk": 24}')
        return v

    @field_validator("preprocessing", "metrics", "provenance")
    @classmethod
    def _json_safe(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _finite(v)

    @field_validator("preprocessing")
    @classmethod
    def _contract(cls, v: dict[str, Any]) -> dict[str, Any]:
        """A `kind`ed table is the typed contract (mobex.preprocessing): it must parse. Older free-form ones pass."""
        if "kind" in v:
            from mobex.preprocessing import parse_preprocessing

            parse_preprocessing(v)
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        fmt = self.model["format"]
        info = plugins.target_for_format(fmt)
        if info is not None and self.platform not in info.platforms:
            served = sorted({t.file_format for t in plugins.targets() if self.platform in t.platforms})
            raise ValueError(f"platform {self.platform} ships {' or '.join(served)} models, not {fmt}")
        min_os = self.model["minimum_os"]
        if self.platform == "ios" and not isinstance(min_os.get("ios"), str):
            raise ValueError('model.minimum_os for iOS must be like {"ios": "iOS16"}')
        if self.platform == "android" and not (
            isinstance(min_os.get("android_min_sdk"), int) and not isinstance(min_os["android_min_sdk"], bool)
        ):
            raise ValueError('model.minimum_os for Android must be like {"android_min_sdk": 24}')
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("files lists a path more than once")
        reserved = {MANIFEST_FILE, SIGNATURE_FILE} & set(paths)
        if reserved:
            raise ValueError(f"files must not list {', '.join(sorted(reserved))}")
        return self

    def model_files(self) -> list[FileEntry]:
        """The entries that make up the model: the model file (.tflite, .pte), or everything under an .mlpackage."""
        path = self.model["path"]
        info = plugins.target_for_format(self.model["format"])
        if info is None or not info.model_is_folder:
            return [f for f in self.files if f.path == path]
        return [f for f in self.files if f.path.startswith(path + "/")]

    def bundle_filename(self) -> str:
        """`<name>-<version>-<platform>.zip`, the bundle's file name everywhere."""
        return f"{self.name}-{self.version}-{self.platform}.zip"

    def to_json_bytes(self) -> bytes:
        """Canonical manifest.json bytes: sorted keys, indent 2, UTF-8, trailing newline."""
        data = self.model_dump(mode="json", by_alias=True)
        return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")

    @classmethod
    def from_json_bytes(cls, data: bytes) -> Manifest:
        """Parse manifest.json (raises pydantic.ValidationError or ValueError, also when too large or deep)."""
        return cls.model_validate(loads_json(data, MANIFEST_FILE, max_bytes=MAX_MANIFEST_BYTES))


def model_section(
    *,
    path: str,
    format: str,
    quantization: str,
    inputs: list[TensorSpec] | list[dict[str, Any]],
    outputs: list[TensorSpec] | list[dict[str, Any]],
    minimum_os: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Build the `model` dict from the pipeline's TensorSpecs, or tensor dicts that say more (the validator's
    `torch_dtype`, `checked_range`); extra keys, e.g. `backend`, are kept."""
    return {
        "path": path,
        "format": format,
        "quantization": quantization,
        "inputs": [t.to_dict() if isinstance(t, TensorSpec) else dict(t) for t in inputs],
        "outputs": [t.to_dict() if isinstance(t, TensorSpec) else dict(t) for t in outputs],
        "minimum_os": dict(minimum_os),
        **extra,
    }


def iso_utc(epoch: int) -> str:
    """`created` value for a Unix time (normally SOURCE_DATE_EPOCH)."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def default_created() -> str:
    """`created` for a new build: $SOURCE_DATE_EPOCH if set (reproducible), else the current time."""
    epoch = resolve_source_date_epoch(None)
    return iso_utc(int(time.time()) if epoch is None else epoch)


def created_epoch(created: str) -> int:
    """Inverse of `iso_utc`."""
    return int(datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp())


def resolve_source_date_epoch(value: int | None = None) -> int | None:
    """The build time: `value`, else $SOURCE_DATE_EPOCH (reproducible-builds.org), else None."""
    if value is not None:
        return int(value)
    env = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not env:
        return None
    if not (env.isascii() and env.isdigit()) or len(env) > 18:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={env!r} is not a non-negative integer",
            hint="set it to a Unix time, e.g. SOURCE_DATE_EPOCH=$(git log -1 --format=%ct)",
        )
    return int(env)


def file_entries(root: Path) -> list[FileEntry]:
    """Every file under `root` except the top-level manifest.json and signature, sorted by posix path.

    Symlinks and special files are refused (UsageError): a bundle holds regular files only.
    """
    root = Path(root)
    entries = []
    for rel in regular_files(root):
        if rel in (MANIFEST_FILE, SIGNATURE_FILE):
            continue
        try:
            check_relative_posix(rel)
        except ValueError as exc:
            raise UsageError(f"cannot bundle {root / rel}: {exc}") from exc
        entries.append(FileEntry(path=rel, sha256=sha256_file(root / rel), size=(root / rel).stat().st_size))
    return sorted(entries, key=lambda e: e.path.encode("utf-8"))


def _check_tensor_spec(spec: Any, where: str) -> None:
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be a dict with name, shape, dtype")
    if not isinstance(spec.get("name"), str) or not isinstance(spec.get("dtype"), str):
        raise ValueError(f"{where} needs string 'name' and 'dtype'")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise ValueError(f"{where}.shape must be a list of ints")
    q = spec.get("quantization")
    if q is not None and not (isinstance(q, dict) and "scale" in q and "zero_point" in q):
        raise ValueError(f"{where}.quantization must be {{'scale': float, 'zero_point': int}} or absent")


def _finite(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays to Python, NaN/Infinity (not JSON) to None, recursively."""
    if type(value).__module__ == "numpy" and hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
