"""Paths of the static registry layout, and the checks that keep names from escaping it.

```
trust/root.json                                   latest root (copy of the highest N)
trust/<N>.root.json                               every root version, immutable, for chained rotation
index.json                                        signed catalog (informational)
models/<model>/channels/<channel>/<platform>.json signed channel pointer: the only files that change
models/<model>/versions/<semver>/<model>-<semver>-<platform>.zip   immutable bundles
```

Every name that becomes part of a path is validated first (model names like bundle names, SemVer
versions, lowercase channel names, android|ios), so no `..`, `/`, `\\` or control character can
reach the file system. `classify` is the server's whitelist: a request path that is not exactly
one of these shapes is not served, whatever is on disk (lock files, temporaries, stray files).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from mobex.errors import UsageError
from mobex.names import NAME_RE, SEMVER_RE

PLATFORMS = ("android", "ios")
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
ROOT_FILE = "trust/root.json"
INDEX_FILE = "index.json"
LOCK_FILE = ".mobex-registry.lock"
TMP_DIR = ".mobex-tmp"
JOURNAL_FILE = ".mobex-journal.json"
MAX_ROOT_VERSION = 1_000_000

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
_SEMVER = SEMVER_RE.pattern.lstrip("^").rstrip("$")
_ROOT_VERSION_RE = re.compile(r"^trust/([1-9][0-9]{0,6})\.root\.json$")
_POINTER_RE = re.compile(rf"^models/({_NAME})/channels/([a-z0-9][a-z0-9_-]{{0,63}})/(android|ios)\.json$")
_STEM = r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,400}"
_BUNDLE_RE = re.compile(
    rf"^models/(?P<model>{_NAME})/versions/(?P<version>{_SEMVER})/(?P<stem>{_STEM})\.zip$", re.ASCII
)


def check_name(name: str) -> str:
    """A model name: the same rule as bundle names (1-128 of letters, digits, '.', '_', '-')."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"model name {name!r} is not valid",
            hint="use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
    return name


def check_version(version: str) -> str:
    """A SemVer 2.0 version (e.g. 1.4.2, 2.0.0-rc.1)."""
    if not isinstance(version, str) or not SEMVER_RE.fullmatch(version):
        raise UsageError(f"version {version!r} is not SemVer 2.0", hint="e.g. 1.4.2 or 2.0.0-rc.1")
    return version


def check_channel(channel: str) -> str:
    """A channel name: lowercase letters, digits, '_' and '-' (stable, beta, canary-2)."""
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        raise UsageError(
            f"channel {channel!r} is not valid",
            hint="use 1-64 lowercase letters, digits, '_' or '-', starting with a letter or digit (e.g. stable, beta)",
        )
    return channel


def check_platform(platform: str) -> str:
    if platform not in PLATFORMS:
        raise UsageError(f"platform {platform!r} is not valid", hint="use android or ios")
    return platform


def bundle_filename(model: str, version: str, platform: str) -> str:
    return f"{check_name(model)}-{check_version(version)}-{check_platform(platform)}.zip"


def bundle_path(model: str, version: str, platform: str) -> str:
    """Registry-relative path of an immutable bundle."""
    return f"models/{model}/versions/{version}/{bundle_filename(model, version, platform)}"


def pointer_path(model: str, channel: str, platform: str) -> str:
    """Registry-relative path of a channel pointer."""
    return f"models/{check_name(model)}/channels/{check_channel(channel)}/{check_platform(platform)}.json"


def root_version_path(version: int) -> str:
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= MAX_ROOT_VERSION:
        raise UsageError(f"root version {version!r} must be an integer from 1 to {MAX_ROOT_VERSION}")
    return f"trust/{version}.root.json"


@dataclass(frozen=True)
class PathKind:
    """What a registry-relative path is, for the server's headers (immutable or not, content type)."""

    kind: str  # root | root-version | index | pointer | bundle
    immutable: bool
    content_type: str


_JSON = "application/json"


@functools.lru_cache(maxsize=4096)
def classify(rel: str) -> PathKind | None:
    """The kind of a registry-relative posix path, or None if it is not a path of the layout."""
    if rel == ROOT_FILE:
        return PathKind("root", False, _JSON)
    if rel == INDEX_FILE:
        return PathKind("index", False, _JSON)
    if _ROOT_VERSION_RE.fullmatch(rel):
        return PathKind("root-version", True, _JSON)
    if _POINTER_RE.fullmatch(rel):
        return PathKind("pointer", False, _JSON)
    m = _BUNDLE_RE.fullmatch(rel)
    if m:
        model, version, stem = m.group("model"), m.group("version"), m.group("stem")
        if any(stem == f"{model}-{version}-{p}" for p in PLATFORMS):
            return PathKind("bundle", True, "application/zip")
    return None
