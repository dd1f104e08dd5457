"""Publish, promote, roll back and refresh: the only ways the registry changes.

Rules (bundles.md §5.2):
- Versions are immutable. Publishing a (model, version, platform) that exists is refused; bundles
  are never rewritten.
- A channel pointer only ever moves forward in `sequence`. Publishing moves the channel to the new
  version only if it is higher (SemVer precedence) than what the channel ships; otherwise the
  version is stored and listed, and the channel stays where it is (the result says so).
- Promotion copies one channel's version to another and refuses to move a channel backwards.
- Rollback is a forward move too: a new pointer (`sequence + 1`) to a published version, always
  marked `downgrade: true` and signed by a release key (plus a channel key, if that is a different key),
  so a stolen channel key alone cannot push a silent downgrade.
- Refresh re-signs the current pointer with a new expiry (CI does this before pointers expire).
- Staged rollouts (`rollout=0.1` on publish and promote) ship a version to a fraction of devices;
  the pointer names what the others keep (the version the channel shipped before). The fraction of
  one version only goes up (devices never move back); a new staged version waits until the current
  one is fully rolled out or rolled back. `min_app_version` is signed into the pointer with them.

Every change runs under the registry lock as one `txn.Transaction`: concurrent publishers queue,
and a publisher killed at any point leaves the registry as it was, or (after its commit point)
rolled forward by the next writer. Bundles are verified against the registry's release keys before
they are copied in: a registry never holds a bundle its own clients would reject.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from mobex.bundle.keys import load_private_key
from mobex.bundle.manifest import Manifest
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, fsutil, index, layout, trust, txn
from mobex.registry.pointer import FULL_PPM, Pointer, Rollout, new_pointer, semver_key
from mobex.registry.rollout import describe, parse_fraction

DEFAULT_EXPIRES = timedelta(days=14)


@dataclass(frozen=True)
class PointerChange:
    """One channel pointer written (or not) by an operation."""

    model: str
    channel: str
    platform: str
    version: str
    sequence: int
    moved: bool
    downgrade: bool = False
    previous_version: str | None = None
    note: str = ""
    rollout_ppm: int | None = None  # None: every device gets `version`
    fallback_version: str | None = None  # what devices outside the rollout get
    min_app_version: str | None = None

    @classmethod
    def of(cls, ptr: Pointer, previous_version: str | None = None) -> PointerChange:
        """The change that writing `ptr` makes."""
        staged = ptr.rollout
        return cls(
            ptr.model, ptr.channel, ptr.platform, ptr.version, ptr.sequence, True, ptr.downgrade, previous_version,
            rollout_ppm=staged.fraction_ppm if staged else None,
            fallback_version=staged.fallback.version if staged else None,
            min_app_version=ptr.min_app_version,
        )  # fmt: skip


@dataclass(frozen=True)
class PublishResult:
    model: str
    version: str
    platform: str
    bundle_path: str
    sha256: str
    size: int
    pointer: PointerChange
    encrypted: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


def publish(
    bundle_zip: Path,
    registry: Path,
    channel: str,
    key: Path,
    *,
    expires: timedelta = DEFAULT_EXPIRES,
    now: datetime | None = None,
    encryption_key: bytes | None = None,
    rollout: float | str | None = None,
    min_app_version: str | None = None,
) -> PublishResult:
    """Copy a verified bundle into the registry as an immutable version and advance `channel` to it.

    `key` is a channel key (and, on an empty registry, becomes the single key for every role).
    With `encryption_key`, the bundle's model files are encrypted (AES-256-GCM) and the bundle is
    re-signed with `key`, which must then also be a release key. `rollout` (a fraction, default 1)
    stages the move; `min_app_version` keeps the new version from older apps.
    """
    registry = Path(registry)
    bundle_zip = Path(bundle_zip)
    layout.check_channel(channel)
    ppm = parse_fraction(rollout) if rollout is not None else None
    if min_app_version is not None:
        layout.check_version(min_app_version)
    signer = load_private_key(key)
    if not bundle_zip.is_file():
        raise UsageError(f"bundle {bundle_zip} does not exist")
    now = now or datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="mobex-publish-") as work:
        if encryption_key is not None:
            from mobex.registry.encryption import encrypt_bundle

            root0 = trust.load_registry_root(registry) or trust.pinned_root(signer.public_key())
            trust.require_role(root0, signer, "release", key)
            plain = trust.verify_release_bundle(bundle_zip, root0, work_dir=Path(work))
            bundle_zip = encrypt_bundle(
                bundle_zip, Path(work) / plain.bundle_filename(), encryption_key, key, manifest=plain
            )
        manifest, root_checked = _verify_before_lock(bundle_zip, registry, signer, Path(work))
        digest, size = _sha256_file(bundle_zip)
        with fsutil.locked(registry):
            txn.recover(registry)
            with _transaction(registry) as t:
                root = _root_for_write(registry, signer, t)
                trust.require_role(root, signer, "channel", key)
                if root.roles["release"] != root_checked.roles["release"] or root.pems != root_checked.pems:
                    trust.verify_release_bundle(bundle_zip, root, work_dir=Path(work))  # root changed meanwhile
                rel = layout.bundle_path(manifest.name, manifest.version, manifest.platform)
                if (registry / rel).exists() or (registry / rel).is_symlink():
                    raise UsageError(
                        f"{manifest.name} {manifest.version} ({manifest.platform}) is already in the registry",
                        hint="versions are immutable: bump the version, or promote/rollback to point a channel at it",
                    )
                t.stage(rel, bundle_zip, txn.NEW)
                current = _current_pointer(registry, manifest.name, channel, manifest.platform)
                idx = index.with_version(
                    index.read_unverified(registry), manifest.name, manifest.version, manifest.platform, digest, size
                )
                if current is None or semver_key(manifest.version) > semver_key(current.version):
                    ptr = new_pointer(
                        model=manifest.name, channel=channel, platform=manifest.platform,
                        sequence=(current.sequence + 1) if current else 1, version=manifest.version,
                        sha256=digest, size=size, now=now, expires_in=expires, min_app_version=min_app_version,
                        rollout=_rollout_for(registry, root, manifest.name, channel, manifest.platform,
                                             manifest.version, ppm),
                    )  # fmt: skip
                    idx = _stage_pointer(t, idx, ptr, [signer])
                    change = PointerChange.of(ptr, current.version if current else None)
                else:
                    change = PointerChange(
                        manifest.name, channel, manifest.platform, current.version, current.sequence, False,
                        previous_version=current.version,
                        note=f"{channel} ships {current.version}, newer than {manifest.version}: the channel "
                        "stays; use promote or rollback to point it at this version",
                    )  # fmt: skip
                t.stage(layout.INDEX_FILE, index.sign(idx, signer), txn.REPLACE)
    return PublishResult(
        manifest.name, manifest.version, manifest.platform, rel, digest, size, change,
        encrypted=encryption_key is not None,
    )  # fmt: skip


def promote(
    model: str,
    registry: Path,
    from_channel: str,
    to_channel: str,
    key: Path,
    *,
    platform: str | None = None,
    expires: timedelta = DEFAULT_EXPIRES,
    now: datetime | None = None,
    rollout: float | str | None = None,
    min_app_version: str | None = None,
) -> list[PointerChange]:
    """Point `to_channel` at the version `from_channel` ships (per platform), with sequence + 1.

    `rollout` (a fraction, default 1) stages it: the rest of the devices keep what `to_channel`
    shipped. `min_app_version` defaults to the source pointer's.
    """
    layout.check_name(model)
    layout.check_channel(from_channel)
    layout.check_channel(to_channel)
    if from_channel == to_channel:
        raise UsageError("--from and --to are the same channel", hint="use refresh to re-sign a pointer")
    ppm = parse_fraction(rollout) if rollout is not None else None
    if min_app_version is not None:
        layout.check_version(min_app_version)
    signer = load_private_key(key)
    now = now or datetime.now(UTC)
    changes = []
    with _locked_registry(registry) as root:
        trust.require_role(root, signer, "channel", key)
        platforms = _platforms(registry, model, from_channel, platform)
        with _transaction(registry) as t:
            idx = index.read_unverified(registry)
            for plat in platforms:
                source = _verified_pointer(registry, root, model, from_channel, plat)
                _check_bundle_file(registry, source)
                target = _current_pointer(registry, model, to_channel, plat)
                if target is not None and semver_key(source.version) < semver_key(target.version):
                    raise UsageError(
                        f"{to_channel} ({plat}) ships {target.version}, newer than {from_channel}'s {source.version}",
                        hint=f"to go back, use `mobex rollback {model} --channel {to_channel} --to {source.version}`",
                    )
                ptr = new_pointer(
                    model=model, channel=to_channel, platform=plat,
                    sequence=(target.sequence + 1) if target else 1, version=source.version,
                    sha256=source.bundle.sha256, size=source.bundle.size, now=now, expires_in=expires,
                    min_app_version=min_app_version or source.min_app_version,
                    rollout=_rollout_for(registry, root, model, to_channel, plat, source.version, ppm),
                )  # fmt: skip
                idx = _stage_pointer(t, idx, ptr, [signer])
                changes.append(PointerChange.of(ptr, target.version if target else None))
            t.stage(layout.INDEX_FILE, index.sign(idx, signer), txn.REPLACE)
    return changes


def rollback(
    model: str,
    registry: Path,
    channel: str,
    to_version: str,
    key: Path,
    *,
    channel_key: Path | None = None,
    platform: str | None = None,
    expires: timedelta = DEFAULT_EXPIRES,
    now: datetime | None = None,
    min_app_version: str | None = None,
) -> list[PointerChange]:
    """Point `channel` at a published (older) version: sequence + 1, `downgrade: true`, release-signed.

    `key` must be a release key; `channel_key` (default: `key`) a channel key. A rollback always
    reaches every device (it also ends a staged rollout). `min_app_version` defaults to the one
    the current pointer records for `to_version` (as its version or its fallback), if any.
    """
    layout.check_name(model)
    layout.check_channel(channel)
    layout.check_version(to_version)
    if min_app_version is not None:
        layout.check_version(min_app_version)
    release_signer = load_private_key(key)
    channel_signer = load_private_key(channel_key) if channel_key else release_signer
    now = now or datetime.now(UTC)
    changes = []
    with tempfile.TemporaryDirectory(prefix="mobex-rollback-") as work, _locked_registry(registry) as root:
        trust.require_role(root, release_signer, "release", key)
        trust.require_role(root, channel_signer, "channel", channel_key or key)
        platforms = _platforms(registry, model, channel, platform)
        with _transaction(registry) as t:
            idx = index.read_unverified(registry)
            for plat in platforms:
                current = _current_pointer(registry, model, channel, plat)
                if current is None:
                    raise UsageError(f"{model} has no {channel} pointer for {plat}: nothing to roll back")
                rel = layout.bundle_path(model, to_version, plat)
                bundle = registry / rel
                if not bundle.is_file() or bundle.is_symlink():
                    raise UsageError(
                        f"{model} {to_version} ({plat}) was never published to this registry",
                        hint="rollback can only point a channel at a version that is in the registry",
                    )
                trust.verify_release_bundle(
                    bundle, root, expect_name=model, expect_version=to_version, expect_platform=plat,
                    work_dir=Path(work),
                )  # fmt: skip
                digest, size = _sha256_file(bundle)
                # Always a downgrade, whatever the pointer on disk says: clients may hold any newer version
                # this channel ever shipped, and the flag is what lets them accept the release-signed move.
                downgrade = True
                ptr = new_pointer(
                    model=model, channel=channel, platform=plat, sequence=current.sequence + 1,
                    version=to_version, sha256=digest, size=size, now=now, expires_in=expires,
                    downgrade=downgrade, min_app_version=min_app_version or _recorded_min_app(current, to_version),
                )  # fmt: skip
                idx = _stage_pointer(t, idx, ptr, [channel_signer, release_signer])
                changes.append(PointerChange.of(ptr, current.version))
            t.stage(layout.INDEX_FILE, index.sign(idx, channel_signer), txn.REPLACE)
    return changes


def refresh(
    model: str,
    registry: Path,
    channel: str,
    key: Path,
    *,
    release_key: Path | None = None,
    platform: str | None = None,
    expires: timedelta = DEFAULT_EXPIRES,
    now: datetime | None = None,
) -> list[PointerChange]:
    """Re-sign the current pointer(s) of `channel` with sequence + 1 and a new expiry.

    A downgrade pointer stays a downgrade (a client that never saw the rollback must still get the
    release signature), so refreshing one needs `release_key`.
    """
    layout.check_name(model)
    layout.check_channel(channel)
    signer = load_private_key(key)
    release_signer = load_private_key(release_key) if release_key else None
    now = now or datetime.now(UTC)
    changes = []
    with _locked_registry(registry) as root:
        trust.require_role(root, signer, "channel", key)
        if release_signer is not None:
            trust.require_role(root, release_signer, "release", release_key or "")
        with _transaction(registry) as t:
            idx = index.read_unverified(registry)
            for plat in _platforms(registry, model, channel, platform):
                current = _verified_pointer(registry, root, model, channel, plat, allow_expired=True)
                signers = [signer]
                if current.downgrade:
                    if release_signer is None and dsse.keyid_of(signer) not in root.roles["release"].keyids:
                        raise UsageError(
                            f"{channel} ({plat}) is a rollback pointer; refreshing it needs a release key",
                            hint="pass --release-key RELEASE.pem",
                        )
                    signers.append(release_signer or signer)
                ptr = new_pointer(
                    model=model, channel=channel, platform=plat, sequence=current.sequence + 1,
                    version=current.version, sha256=current.bundle.sha256, size=current.bundle.size,
                    now=now, expires_in=expires, downgrade=current.downgrade,
                    min_app_version=current.min_app_version, rollout=current.rollout,
                )  # fmt: skip
                idx = _stage_pointer(t, idx, ptr, signers)
                changes.append(PointerChange.of(ptr))
            t.stage(layout.INDEX_FILE, index.sign(idx, signer), txn.REPLACE)
    return changes


def read_pointer(registry: Path, model: str, channel: str, platform: str) -> Pointer | None:
    """The pointer on disk, parsed but not verified (None if there is none)."""
    return _current_pointer(Path(registry), model, channel, platform)


# --- helpers ---------------------------------------------------------------------------------


@contextmanager
def _locked_registry(registry: Path) -> Iterator[trust.Root]:
    """Every change but a first publish: under the lock, after finishing an interrupted writer, on an existing root."""
    with fsutil.locked(registry):
        txn.recover(registry)
        yield _existing_root(registry)


@contextmanager
def _transaction(registry: Path) -> Iterator[txn.Transaction]:
    """Commit what the block staged, or drop it all if the block (or the commit) raises: all or nothing."""
    t = txn.Transaction(registry)
    try:
        yield t
        t.commit()
    except BaseException:
        t.abort()
        raise


def _verify_before_lock(
    bundle_zip: Path, registry: Path, signer: ec.EllipticCurvePrivateKey, work: Path
) -> tuple[Manifest, trust.Root]:
    """Verify outside the lock (it takes a while); re-checked under the lock only if root changed."""
    root = trust.load_registry_root(registry) if (Path(registry) / "trust").exists() else None
    root = root or trust.pinned_root(signer.public_key())
    try:
        manifest = trust.verify_release_bundle(bundle_zip, root, work_dir=work)
    except VerificationError as exc:
        raise VerificationError(
            f"refusing to publish {bundle_zip.name}: {exc.message}",
            hint=exc.hint or "publish only bundles signed by a release key of this registry",
        ) from exc
    return manifest, root


def _root_for_write(registry: Path, signer: ec.EllipticCurvePrivateKey, t: txn.Transaction) -> trust.Root:
    root = trust.load_registry_root(registry)
    if root is not None:
        return root
    pub = signer.public_key()
    root = trust.make_root(1, root_keys=[pub], release_keys=[pub], channel_keys=[pub])
    envelope = trust.sign_root(root, [signer])
    t.stage(layout.root_version_path(1), envelope, txn.NEW)
    t.stage(layout.ROOT_FILE, envelope, txn.REPLACE)
    return root


def _existing_root(registry: Path) -> trust.Root:
    root = trust.load_registry_root(registry)
    if root is None:
        raise UsageError(f"{registry} is not a mobex registry (no trust/root.json)", hint="publish a bundle first")
    return root


def _pointer_rel(ptr: Pointer) -> str:
    return layout.pointer_path(ptr.model, ptr.channel, ptr.platform)


def _sign_pointer(ptr: Pointer, signers: list[ec.EllipticCurvePrivateKey]) -> bytes:
    return dsse.sign(dsse.POINTER_TYPE, ptr.to_payload(), signers)


def _stage_pointer(
    t: txn.Transaction, idx: dict[str, Any], ptr: Pointer, signers: list[ec.EllipticCurvePrivateKey]
) -> dict[str, Any]:
    """Stage the signed pointer and return the index that lists it, so the two never disagree."""
    t.stage(_pointer_rel(ptr), _sign_pointer(ptr, signers), txn.REPLACE)
    return index.with_pointer(idx, ptr)


def _current_pointer(registry: Path, model: str, channel: str, platform: str) -> Pointer | None:
    rel = layout.pointer_path(model, channel, platform)
    try:
        data = fsutil.read_file(registry, rel, dsse.MAX_ENVELOPE_BYTES)
    except fsutil.NotFound:
        return None
    return Pointer.from_payload(dsse.parse(data, rel).payload, rel)


def _verified_pointer(
    registry: Path, root: trust.Root, model: str, channel: str, platform: str, *, allow_expired: bool = False
) -> Pointer:
    rel = layout.pointer_path(model, channel, platform)
    try:
        data = fsutil.read_file(registry, rel, dsse.MAX_ENVELOPE_BYTES)
    except fsutil.NotFound as exc:
        raise UsageError(f"{model} has no {channel} pointer for {platform}") from exc
    payload, _ = dsse.verify(
        data, dsse.POINTER_TYPE, root.role_keys("channel"), threshold=root.threshold("channel"), what=rel
    )
    ptr = Pointer.from_payload(payload, rel)
    if (ptr.model, ptr.channel, ptr.platform) != (model, channel, platform):
        raise VerificationError(f"{rel} is a pointer for {ptr.model}/{ptr.channel}/{ptr.platform}")
    if not allow_expired and ptr.expires_at < datetime.now(UTC):
        raise UsageError(
            f"{rel} expired at {ptr.expires}",
            hint=f"refresh it first: `mobex refresh {model} --channel {channel} --key KEY.pem`",
        )
    return ptr


def _rollout_for(
    registry: Path, root: trust.Root, model: str, channel: str, platform: str, version: str, ppm: int | None
) -> Rollout | None:
    """The `rollout` of a pointer moving `channel` to `version` for `ppm` of devices (None: all of them).

    The fallback is what the channel ships now, read from its verified pointer. Refused: a staged
    rollout with nothing shipped before, a lower fraction than before (devices would move back),
    and a new staged version while another is still rolling out (its devices would move back).
    """
    if ppm is None or ppm >= FULL_PPM:
        return None
    where = f"{model} {channel} ({platform})"
    if _current_pointer(registry, model, channel, platform) is None:
        raise UsageError(
            f"{where} ships nothing yet: a staged rollout needs a version for the devices outside it",
            hint="ship the first version to every device (leave out --rollout)",
        )
    current = _verified_pointer(registry, root, model, channel, platform, allow_expired=True)
    back = f"`mobex rollback {model} --channel {channel} --to VERSION`"
    if current.rollout is not None:
        staged = current.rollout
        if current.version != version:
            raise UsageError(
                f"{where} is still rolling out {current.version} to {describe(staged.fraction_ppm)} of devices",
                hint=f"finish it first (--rollout 1), or end it with {back}",
            )
        if ppm < staged.fraction_ppm:
            raise UsageError(
                f"{where} ships {version} to {describe(staged.fraction_ppm)} already; {describe(ppm)} would move "
                f"devices back to {staged.fallback.version}",
                hint=f"a rollout fraction only goes up; to stop it, use {back}",
            )
        return Rollout(fraction_ppm=ppm, fallback=staged.fallback)
    if semver_key(version) <= semver_key(current.version):
        raise UsageError(
            f"{where} ships {current.version} to every device; a staged rollout of {version} would move devices back",
            hint=f"to go back, use {back}",
        )
    _check_bundle_file(registry, current)
    return Rollout(fraction_ppm=ppm, fallback=current.release())


def _recorded_min_app(ptr: Pointer, version: str) -> str | None:
    """The min_app_version `ptr` records for `version` (its own or its fallback's), if any."""
    if ptr.version == version:
        return ptr.min_app_version
    if ptr.rollout is not None and ptr.rollout.fallback.version == version:
        return ptr.rollout.fallback.min_app_version
    return None


def _check_bundle_file(registry: Path, ptr: Pointer) -> None:
    try:
        fd = fsutil.open_nofollow(registry, ptr.bundle.path)
    except fsutil.NotFound as exc:
        raise VerificationError(f"{ptr.bundle.path} named by the {ptr.channel} pointer is missing") from exc
    with os.fdopen(fd, "rb") as f:
        digest, size = _sha256_stream(f)
    if (digest, size) != (ptr.bundle.sha256, ptr.bundle.size):
        raise VerificationError(f"{ptr.bundle.path} does not match the sha256/size in the {ptr.channel} pointer")


def _platforms(registry: Path, model: str, channel: str, platform: str | None) -> list[str]:
    if platform is not None:
        return [layout.check_platform(platform)]
    found = [p for p in layout.PLATFORMS if _current_pointer(Path(registry), model, channel, p) is not None]
    if not found:
        raise UsageError(f"{model} has no {channel} pointer in {registry}", hint="check the model and channel names")
    return found


def _sha256_file(path: Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return _sha256_stream(f)


def _sha256_stream(f) -> tuple[str, int]:  # noqa: ANN001
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return h.hexdigest(), size
