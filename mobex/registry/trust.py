"""root.json: which keys an app trusts for which role, and how that set rotates.

Roles (bundles.md §5.3):
- `root`: signs root.json itself. Keep it offline.
- `release`: signs bundles (model-signing) and co-signs downgrade pointers. Keep it offline.
- `channel`: signs channel pointers and the index. Lives in CI; its pointers expire soon, and a
  stolen channel key alone can neither introduce new model bytes nor push a silent downgrade.

One key in all three roles is the default: the first `publish` to an empty registry writes
`trust/1.root.json` naming the publishing key for every role. Teams that want separate keys call
`init_root` (or `mobex trust init`) before the first publish.

Rotation is TUF's root chaining: `trust/<N+1>.root.json` is accepted only if it is signed by a
threshold of version N's root keys *and* of its own root keys, and its version is exactly N+1.
A client starts from what it pins, either a root public key (a virtual version 0 that trusts that
key for every role) or a root.json it ships, walks N+1, N+2, ... as far as the registry goes, and
remembers the newest root it verified, so an old root can never be replayed at it. Pointer
sequences are stored per channel key id, so rotating the channel key also resets the ratchet
(recovering from a fast-forward attack by a stolen channel key, as in TUF 5.3.11).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mobex.bounded import loads_json
from mobex.bundle.keys import load_private_key, load_public_key, public_key_hint
from mobex.bundle.manifest import Manifest
from mobex.bundle.signing import SIGNATURE_FILE
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, fsutil, layout
from mobex.registry.pointer import format_time, parse_time

SCHEMA_ID = "https://mobex.dev/schemas/registry-root/v1"
ROLES = ("root", "release", "channel")
MAX_CHAIN_STEPS = 1000
_MAX_ROOT_BYTES = 1 << 20


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int = 1


@dataclass(frozen=True)
class Root:
    """A root of trust: version, optional expiry, keys (PEM by key id) and the roles' key ids."""

    version: int
    pems: Mapping[str, str]
    roles: Mapping[str, Role]
    expires: str | None = None
    payload: bytes = field(default=b"", compare=False, repr=False)

    def role_keys(self, role: str) -> dict[str, ec.EllipticCurvePublicKey]:
        return {kid: _load_pem(self.pems[kid]) for kid in self.roles[role].keyids}

    def threshold(self, role: str) -> int:
        return self.roles[role].threshold

    def to_payload(self) -> bytes:
        doc = {
            "schema": SCHEMA_ID,
            "version": self.version,
            "expires": self.expires,
            "keys": {kid: {"keytype": "ecdsa-p256-sha256", "pem": pem} for kid, pem in sorted(self.pems.items())},
            "roles": {
                name: {"keyids": sorted(role.keyids), "threshold": role.threshold} for name, role in self.roles.items()
            },
        }
        return dsse.dumps_canonical(doc)

    @classmethod
    def from_payload(cls, payload: bytes, what: str = "root.json") -> Root:
        """Parse and check a root payload; VerificationError on anything unexpected."""
        try:
            doc = dsse.loads_strict(payload)
            if not isinstance(doc, dict) or doc.get("schema") != SCHEMA_ID:
                raise ValueError(f"schema must be {SCHEMA_ID}")
            if set(doc) != {"schema", "version", "expires", "keys", "roles"}:
                raise ValueError("unexpected or missing fields")
            version = doc["version"]
            if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= layout.MAX_ROOT_VERSION:
                raise ValueError("version must be a positive integer")
            expires = doc["expires"]
            if expires is not None:
                parse_time(expires)
            pems: dict[str, str] = {}
            for kid, entry in doc["keys"].items():
                if not isinstance(entry, dict) or entry.get("keytype") != "ecdsa-p256-sha256":
                    raise ValueError(f"key {kid[:12]} is not an ecdsa-p256-sha256 key")
                pem = entry["pem"]
                if public_key_hint(_load_pem(pem)) != kid:
                    raise ValueError(f"key id {kid[:12]}… does not match its PEM")
                pems[kid] = pem
            roles: dict[str, Role] = {}
            if set(doc["roles"]) != set(ROLES):
                raise ValueError(f"roles must be exactly {', '.join(ROLES)}")
            for name, role in doc["roles"].items():
                keyids = role["keyids"]
                threshold = role["threshold"]
                if not isinstance(keyids, list) or not keyids or len(set(keyids)) != len(keyids):
                    raise ValueError(f"role {name} needs a list of distinct key ids")
                if any(k not in pems for k in keyids):
                    raise ValueError(f"role {name} names a key that is not in keys")
                if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= len(keyids):
                    raise ValueError(f"role {name} threshold must be between 1 and its number of keys")
                roles[name] = Role(tuple(keyids), threshold)
        except VerificationError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as exc:
            raise VerificationError(f"{what} is invalid: {exc}") from exc
        return cls(version=version, pems=pems, roles=roles, expires=expires, payload=payload)


def pinned_root(public_key: ec.EllipticCurvePublicKey) -> Root:
    """Version 0: trust one key for every role (what `--key PUB.pem` means to a client)."""
    pem = _pem_of(public_key)
    kid = public_key_hint(public_key)
    return Root(version=0, pems={kid: pem}, roles={r: Role((kid,)) for r in ROLES})


def load_pin(path: Path) -> Root:
    """What a client pins: a PEM public key (root key), or a root.json envelope signed by its own root keys."""
    path = Path(path).expanduser()
    try:
        head = path.read_bytes()[: _MAX_ROOT_BYTES + 1] if path.is_file() else b""
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if head.lstrip().startswith(b"{"):
        env = dsse.parse(head, str(path))
        root = Root.from_payload(env.payload, str(path))
        dsse.verify(env, dsse.ROOT_TYPE, root.role_keys("root"), threshold=root.threshold("root"), what=str(path))
        return root
    return pinned_root(load_public_key(path))


def make_root(
    version: int,
    *,
    root_keys: Sequence[ec.EllipticCurvePublicKey],
    release_keys: Sequence[ec.EllipticCurvePublicKey],
    channel_keys: Sequence[ec.EllipticCurvePublicKey],
    thresholds: Mapping[str, int] | None = None,
    expires: datetime | None = None,
) -> Root:
    pems: dict[str, str] = {}
    roles: dict[str, Role] = {}
    thresholds = dict(thresholds or {})
    for name, keys in (("root", root_keys), ("release", release_keys), ("channel", channel_keys)):
        if not keys:
            raise UsageError(f"role {name} needs at least one key")
        ids = []
        for key in keys:
            kid = public_key_hint(key)
            pems[kid] = _pem_of(key)
            if kid not in ids:
                ids.append(kid)
        threshold = thresholds.get(name, 1)
        if not 1 <= threshold <= len(ids):
            raise UsageError(f"threshold {threshold} for role {name} must be between 1 and {len(ids)}")
        roles[name] = Role(tuple(ids), threshold)
    root = Root(version, pems, roles, format_time(expires) if expires else None)
    return Root.from_payload(root.to_payload())  # normalized, and checked like a parsed one


def sign_root(root: Root, signers: Sequence[ec.EllipticCurvePrivateKey]) -> bytes:
    return dsse.sign(dsse.ROOT_TYPE, root.to_payload(), signers)


def verify_successor(trusted: Root, envelope: bytes, *, what: str = "root.json") -> Root:
    """The next root (version trusted.version + 1), if signed by both the old and its own root keys."""
    env = dsse.parse(envelope, what)
    if env.payload_type != dsse.ROOT_TYPE:
        raise VerificationError(f"{what} has payload type {env.payload_type!r}, expected {dsse.ROOT_TYPE!r}")
    dsse.verify(
        env,
        dsse.ROOT_TYPE,
        trusted.role_keys("root"),
        threshold=trusted.threshold("root"),
        what=f"{what} (by the previous root's keys)",
    )
    new = Root.from_payload(env.payload, what)
    if new.version != trusted.version + 1:
        raise VerificationError(f"{what} has version {new.version}, expected {trusted.version + 1}")
    dsse.verify(env, dsse.ROOT_TYPE, new.role_keys("root"), threshold=new.threshold("root"), what=f"{what} (own keys)")
    return new


def resolve(fetch: Callable[[str], bytes | None], start: Root, *, now: datetime | None = None) -> Root:
    """Walk trust/<N+1>.root.json from `start` as far as `fetch` finds files; check the final expiry.

    `fetch(rel)` returns the file's bytes, or None if it does not exist.
    """
    current = start
    for _ in range(MAX_CHAIN_STEPS):
        rel = layout.root_version_path(current.version + 1)
        data = fetch(rel)
        if data is None:
            break
        try:
            current = verify_successor(current, data, what=rel)
        except VerificationError as exc:
            if current.version == 0:
                kid = next(iter(current.pems))
                raise VerificationError(
                    f"{rel} is not signed by the pinned key {kid[:12]}…: this registry's root key is another one",
                    hint="pin the registry's root public key (the key of its first publish, or `mobex trust init`)",
                ) from exc
            raise
    else:
        raise VerificationError(f"root chain is longer than {MAX_CHAIN_STEPS} steps in one update")
    if current.expires is not None and (now or datetime.now(UTC)) > parse_time(current.expires):
        raise VerificationError(
            f"root.json version {current.version} expired at {current.expires}",
            hint="the registry owner must publish a new root version signed with the root key",
        )
    return current


# --- the publisher's side -------------------------------------------------------------------


def load_registry_root(registry: Path) -> Root | None:
    """The registry's newest root, checked along the whole chain from version 1 (None if no root yet)."""
    registry = Path(registry)

    def fetch(rel: str) -> bytes | None:
        try:
            return fsutil.read_file(registry, rel, _MAX_ROOT_BYTES)
        except fsutil.NotFound:
            return None

    first = fetch(layout.root_version_path(1))
    if first is None:
        return None
    env = dsse.parse(first, "trust/1.root.json")
    v1 = Root.from_payload(env.payload, "trust/1.root.json")
    dsse.verify(env, dsse.ROOT_TYPE, v1.role_keys("root"), threshold=v1.threshold("root"), what="trust/1.root.json")
    if v1.version != 1:
        raise VerificationError(f"trust/1.root.json says version {v1.version}")
    return resolve(fetch, v1, now=datetime(1970, 1, 1, tzinfo=UTC))  # publishers may re-sign an expired root


def write_root(registry: Path, root: Root, envelope: bytes) -> None:
    """Add `trust/<N>.root.json` (never replacing one) and point `trust/root.json` at it."""
    fsutil.ensure_dir(registry, "trust")
    versioned = Path(registry) / layout.root_version_path(root.version)
    if versioned.exists() or versioned.is_symlink():
        raise UsageError(f"{versioned} already exists; root versions are immutable")
    tmp = fsutil.write_temp(versioned.parent, envelope, prefix=versioned.name)
    try:
        os.link(tmp, versioned)
    finally:
        tmp.unlink(missing_ok=True)
    fsutil.atomic_write(Path(registry) / layout.ROOT_FILE, envelope)


def init_root(
    registry: Path,
    root_key: Path,
    *,
    release_keys: Sequence[Path] = (),
    channel_keys: Sequence[Path] = (),
    expires: datetime | None = None,
) -> Root:
    """Write root version 1, signed by `root_key` (private). Roles default to the root key itself."""
    registry = Path(registry)
    signer = load_private_key(root_key)
    root_pub = signer.public_key()
    with fsutil.locked(registry):
        if load_registry_root(registry) is not None:
            raise UsageError(f"{registry} already has a root.json", hint="use rotate_root / `mobex trust rotate`")
        root = make_root(
            1,
            root_keys=[root_pub],
            release_keys=[load_public_key(p) for p in release_keys] or [root_pub],
            channel_keys=[load_public_key(p) for p in channel_keys] or [root_pub],
            expires=expires,
        )
        write_root(registry, root, sign_root(root, [signer]))
    return root


def rotate_root(
    registry: Path,
    signing_keys: Sequence[Path],
    *,
    root_keys: Sequence[Path],
    release_keys: Sequence[Path],
    channel_keys: Sequence[Path],
    thresholds: Mapping[str, int] | None = None,
    expires: datetime | None = None,
) -> Root:
    """Write root version N+1. `signing_keys` (private) must include enough old *and* new root keys."""
    registry = Path(registry)
    signers = [load_private_key(p) for p in signing_keys]
    with fsutil.locked(registry):
        current = load_registry_root(registry)
        if current is None:
            raise UsageError(f"{registry} has no root.json yet", hint="use init_root / `mobex trust init`")
        new = make_root(
            current.version + 1,
            root_keys=[load_public_key(p) for p in root_keys],
            release_keys=[load_public_key(p) for p in release_keys],
            channel_keys=[load_public_key(p) for p in channel_keys],
            thresholds=thresholds,
            expires=expires,
        )
        envelope = sign_root(new, signers)
        try:
            verify_successor(current, envelope, what=f"new root version {new.version}")
        except VerificationError as exc:
            raise UsageError(
                f"cannot rotate: {exc.message}",
                hint="sign with enough keys of the current root role and of the new root role",
            ) from exc
        write_root(registry, new, envelope)
    return new


def ensure_root(registry: Path, key: ec.EllipticCurvePrivateKey) -> Root:
    """The registry's root; if it has none, create version 1 with `key` in every role (the default)."""
    root = load_registry_root(registry)
    if root is not None:
        return root
    pub = key.public_key()
    root = make_root(1, root_keys=[pub], release_keys=[pub], channel_keys=[pub])
    write_root(Path(registry), root, sign_root(root, [key]))
    return root


def require_role(root: Root, key: ec.EllipticCurvePrivateKey, role: str, key_path: Path | str) -> str:
    """The key id of `key`, if root.json trusts it for `role`; else a UsageError that says how to fix it."""
    kid = dsse.keyid_of(key)
    if kid not in root.roles[role].keyids:
        raise UsageError(
            f"{key_path} (key id {kid[:12]}…) is not a {role} key of this registry (root.json version {root.version})",
            hint=f"sign with a {role} key listed in trust/root.json, or rotate root.json to add this key",
        )
    return kid


# --- bundles against the release role --------------------------------------------------------


def bundle_signer_hint(zip_path: Path) -> str | None:
    """The (unauthenticated) key hint in a bundle's signature, used only to pick which key to try."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = [i for i in zf.infolist() if i.orig_filename == SIGNATURE_FILE]
            if len(infos) != 1 or infos[0].file_size > 64 << 20:
                return None
            bundle = loads_json(zf.read(infos[0]), SIGNATURE_FILE)
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
        return hint if isinstance(hint, str) else None
    except Exception:  # anything malformed: let the real verification report it
        return None


def verify_release_bundle(
    zip_path: Path,
    root: Root,
    *,
    expect_name: str | None = None,
    expect_version: str | None = None,
    expect_platform: str | None = None,
    work_dir: Path | None = None,
) -> Manifest:
    """verify_bundle with the release key of `root` that signed the bundle (by its hint)."""
    from mobex.bundle.verify import verify_bundle

    release = root.roles["release"].keyids
    hint = bundle_signer_hint(zip_path)
    kid = hint if hint in release else release[0]
    with pem_file(root.pems[kid], work_dir) as pub_path:
        try:
            return verify_bundle(
                zip_path,
                pub_path,
                expect_name=expect_name,
                expect_version=expect_version,
                expect_platform=expect_platform,
            )
        except VerificationError as exc:
            if hint is not None and hint not in release:
                raise VerificationError(
                    f"bundle is signed by key {hint[:12]}…, which is not a release key of root.json "
                    f"version {root.version}",
                    hint="sign bundles with a release key listed in trust/root.json",
                ) from exc
            raise


@contextlib.contextmanager
def pem_file(pem: str, directory: Path | None = None) -> Iterator[Path]:
    """A temporary .pem file holding `pem` (verify_bundle takes a path)."""
    with tempfile.TemporaryDirectory(prefix="mobex-key-", dir=directory) as tmp:
        path = Path(tmp) / "key.pub.pem"
        path.write_text(pem, encoding="ascii")
        yield path


def _pem_of(key: ec.EllipticCurvePublicKey) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def _load_pem(pem: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(pem, str) or len(pem) > 10_000:
        raise ValueError("pem must be a PEM string")
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("keys must be ECDSA P-256")
    return key
