"""index.json: a signed catalog of models, versions and channels, for people and dashboards.

It is informational: clients never need it (they go straight to a channel pointer), so a stale or
missing index cannot make an app install anything. It is signed by the channel key like pointers
(payloadType `application/vnd.mobex.registry-index+json`) so that a tool listing the registry can
still tell a forged catalog from a real one. Publishers update it under the registry lock in the
same transaction as the pointer; `rebuild` recomputes it from the files on disk.

```json
{"schema": "https://mobex.dev/schemas/registry-index/v1",
 "models": {"digits": {
   "versions": {"1.0.0": {"android": {"path": "models/...zip", "sha256": "<hex>", "size": 123}}},
   "channels": {"beta": {"android": {"version": "1.0.0", "sequence": 3, "expires": "..."}}}}}}
```
"""

from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from mobex.errors import VerificationError
from mobex.registry import dsse, fsutil, layout
from mobex.registry.pointer import Pointer

SCHEMA_ID = "https://mobex.dev/schemas/registry-index/v1"
MAX_INDEX_BYTES = 64 << 20


def empty() -> dict[str, Any]:
    return {"schema": SCHEMA_ID, "models": {}}


def read_unverified(registry: Path) -> dict[str, Any]:
    """The registry's current index as the publisher left it (rebuilt from disk if absent or unreadable)."""
    try:
        data = fsutil.read_file(registry, layout.INDEX_FILE, MAX_INDEX_BYTES)
        doc = dsse.loads_strict(dsse.parse(data, "index.json").payload)
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID or not isinstance(doc.get("models"), dict):
            raise VerificationError("index.json has an unexpected shape")
        return doc
    except fsutil.NotFound:
        return rebuild(registry)
    except (VerificationError, ValueError):
        return rebuild(registry)


def with_version(index: dict[str, Any], model: str, version: str, platform: str, sha256: str, size: int) -> dict:
    out = copy.deepcopy(index)
    entry = out["models"].setdefault(model, {"versions": {}, "channels": {}})
    entry["versions"].setdefault(version, {})[platform] = {
        "path": layout.bundle_path(model, version, platform),
        "sha256": sha256,
        "size": size,
    }
    return out


def with_pointer(index: dict[str, Any], pointer: Pointer) -> dict:
    out = copy.deepcopy(index)
    entry = out["models"].setdefault(pointer.model, {"versions": {}, "channels": {}})
    entry["channels"].setdefault(pointer.channel, {})[pointer.platform] = {
        "version": pointer.version,
        "sequence": pointer.sequence,
        "expires": pointer.expires,
        "downgrade": pointer.downgrade,
    }
    entry = out["models"][pointer.model]["channels"][pointer.channel][pointer.platform]
    if pointer.min_app_version is not None:
        entry["min_app_version"] = pointer.min_app_version
    if pointer.rollout is not None:
        entry["rollout"] = {"fraction_ppm": pointer.rollout.fraction_ppm, "fallback": pointer.rollout.fallback.version}
    return out


def sign(index: dict[str, Any], signer: ec.EllipticCurvePrivateKey) -> bytes:
    return dsse.sign(dsse.INDEX_TYPE, dsse.dumps_canonical(index), [signer])


def verify(data: bytes, trusted: dict[str, ec.EllipticCurvePublicKey]) -> dict[str, Any]:
    """A client's view: the index payload, only if a trusted channel key signed it."""
    payload, _ = dsse.verify(data, dsse.INDEX_TYPE, trusted, what="index.json")
    doc = dsse.loads_strict(payload)
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
        raise VerificationError("index.json has an unexpected schema")
    return doc


def rebuild(registry: Path) -> dict[str, Any]:
    """The index recomputed from the bundles and pointers on disk (hashes every bundle: slow on big registries)."""
    registry = Path(registry)
    index = empty()
    models_dir = registry / "models"
    if not models_dir.is_dir() or models_dir.is_symlink():
        return index
    for model in sorted(os.listdir(models_dir)):
        versions = models_dir / model / "versions"
        if versions.is_dir() and not versions.is_symlink():
            for version in sorted(os.listdir(versions)):
                for platform in layout.PLATFORMS:
                    try:
                        rel = layout.bundle_path(model, version, platform)
                    except Exception:
                        continue
                    try:
                        fd = fsutil.open_nofollow(registry, rel)
                    except (fsutil.NotFound, VerificationError):
                        continue
                    digest, size = _hash_fd(fd)
                    index = with_version(index, model, version, platform, digest, size)
        channels = models_dir / model / "channels"
        if channels.is_dir() and not channels.is_symlink():
            for channel in sorted(os.listdir(channels)):
                for platform in layout.PLATFORMS:
                    try:
                        rel = layout.pointer_path(model, channel, platform)
                        data = fsutil.read_file(registry, rel, dsse.MAX_ENVELOPE_BYTES)
                        ptr = Pointer.from_payload(dsse.parse(data, rel).payload, rel)
                    except Exception:
                        continue
                    index = with_pointer(index, ptr)
    return index


def _hash_fd(fd: int) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size
