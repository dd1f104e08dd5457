"""`pull`: the client algorithm of bundles.md §5.2, step by step, as an app would run it.

0. Trust: start from what the caller pins (`--key`: a root public key, or a root.json), or from the
   newest root this `--out` folder verified before; walk `trust/<N+1>.root.json` forward.
1. GET the pointer (If-None-Match with the last ETag; a 304 reuses the cached copy, which is
   verified again like a fresh one). Verify its DSSE signature with the channel keys of that root.
2. Check that model, channel and platform are the ones asked for.
3. Freeze check: now <= expires + skew, else keep the installed bundle and fail.
4. Rollback check: sequence >= the last one seen for this pointer under this channel key id
   (`--out/.mobex/state.json`). Equal: nothing new, unless a different bundle (equivocation: refused).
5. Downgrade check: a version lower than the installed one needs `downgrade: true`, and any
   downgrade pointer needs a release-key signature too. (min_app_version/rollout: not implemented.)
6. If the installed bundle has the pointer's sha256, stop. Else download into `--out/.mobex/tmp`,
   aborting one byte past the signed size, hashing while streaming; the digest must match.
7-9. Verify the archive with the release key (`verify_bundle`: safe extraction, model-signing
   signature, every file against the signed manifest, name/version/platform equal the pointer).
   Extract it again for installation and check that tree against the signature too (what is
   installed is exactly what was verified), then decrypt model files if the manifest says they
   are encrypted (after verification, never before).
10. (Core ML compilation and self-tests are the app's; not done here.)
11. Swap atomically: `--out/current` is a symlink replaced in one rename; `--out/previous` keeps
    the version before for local fallback. Then persist the sequence.

Every failure raises a mobex error and leaves `--out` as it was (the installed bundle untouched).
Only `--out` is written to (plus the system temp folder, which `verify_bundle` uses and cleans).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from mobex.bundle.archive import safe_extract
from mobex.bundle.signing import verify_directory
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, fetch, fsutil, layout, trust
from mobex.registry.pointer import Pointer, semver_key

STATE_DIR = ".mobex"
STATE_FILE = "state.json"
STATE_SCHEMA = "https://mobex.dev/schemas/pull-state/v1"
CURRENT = "current"
PREVIOUS = "previous"
BUNDLES = "bundles"
DEFAULT_SKEW = timedelta(minutes=5)
DEFAULT_MAX_BYTES = 2 << 30
_MAX_ROOT_BYTES = 1 << 20


@dataclass(frozen=True)
class PullResult:
    status: str  # "installed" | "up-to-date"
    model: str
    channel: str
    platform: str
    version: str
    sequence: int
    sha256: str
    path: str  # the installed bundle folder (what `--out/current` points to)
    previous_version: str | None
    downgrade: bool
    decrypted: bool
    root_version: int

    def to_dict(self) -> dict:
        return asdict(self)


def pull(
    model: str,
    source: str | Path,
    channel: str,
    platform: str,
    key: Path,
    out: Path,
    *,
    token: str | None = None,
    decryption_key: bytes | None = None,
    now: datetime | None = None,
    skew: timedelta = DEFAULT_SKEW,
    max_bundle_bytes: int = DEFAULT_MAX_BYTES,
    deadline_s: float | None = fetch.DEFAULT_DEADLINE_S,
) -> PullResult:
    """Install the bundle `channel` ships for `platform` into `out`, or fail leaving `out` as it was.

    Everything fetched from the registry must arrive within `deadline_s` seconds in total (None: no limit)."""
    layout.check_name(model)
    layout.check_channel(channel)
    layout.check_platform(platform)
    now = now or datetime.now(UTC)
    pin = trust.load_pin(key)
    deadline = fetch.Deadline(deadline_s)
    src = fetch.open_source(source, token, deadline)
    out = Path(out)
    _check_out(out)
    state_dir = fsutil.ensure_dir(out, STATE_DIR)
    with fsutil.locked(state_dir, name="lock"):
        tmp_dir = state_dir / "tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        try:
            return _pull_locked(
                model, src, channel, platform, pin, out, state_dir, tmp_dir,
                decryption_key=decryption_key, now=now, skew=skew, max_bundle_bytes=max_bundle_bytes,
            )  # fmt: skip
        finally:
            deadline.cancel()
            shutil.rmtree(tmp_dir, ignore_errors=True)


def _pull_locked(
    model: str,
    src: fetch.Source,
    channel: str,
    platform: str,
    pin: trust.Root,
    out: Path,
    state_dir: Path,
    tmp_dir: Path,
    *,
    decryption_key: bytes | None,
    now: datetime,
    skew: timedelta,
    max_bundle_bytes: int,
) -> PullResult:
    state = _load_state(state_dir)
    # 0. trust
    anchor = _anchor(pin)
    start = pin
    if state.get("anchor") == anchor and state.get("root"):
        stored = trust.Root.from_payload(base64.b64decode(state["root"]), "stored root")
        if stored.version >= pin.version:
            start = stored

    def get_root(rel: str) -> bytes | None:
        return src.get(rel, _MAX_ROOT_BYTES).data

    root = trust.resolve(get_root, start, now=now)

    # 1-5. pointer (checked by check_pointer)
    rel = layout.pointer_path(model, channel, platform)
    ident = f"{model}/{channel}/{platform}"
    cache = state.get("pointer_cache", {}).get(ident) or {}
    got = src.get(rel, dsse.MAX_ENVELOPE_BYTES, etag=cache.get("etag"))
    if got.not_modified and cache.get("envelope"):
        envelope = base64.b64decode(cache["envelope"])
    elif got.data is None:
        raise UsageError(
            f"{src.description} has no {channel} pointer for {model} ({platform})",
            hint="check the model name, --channel and --platform",
        )
    else:
        envelope = got.data
    installed = state.get("installed") if _installed_ok(out, state) else None
    keep = f"; keeping {installed['version']}" if installed else ""
    same_model = installed and installed["model"] == model and installed["platform"] == platform
    try:
        ptr, channel_ids = check_pointer(
            envelope, root, model=model, channel=channel, platform=platform, now=now, skew=skew,
            seen=state.setdefault("sequences", {}), installed_version=installed["version"] if same_model else None,
            rel=rel,
        )  # fmt: skip
    except VerificationError as exc:
        raise VerificationError(exc.message + keep, hint=exc.hint) from exc
    if ptr.bundle.size > max_bundle_bytes:
        raise VerificationError(f"{rel} names a {ptr.bundle.size}-byte bundle, over the {max_bundle_bytes} cap")

    # 6. nothing new?
    if installed and installed["sha256"] == ptr.bundle.sha256:
        _remember(state, channel_ids, ident, ptr, got, envelope, root, anchor)
        _save_state(state_dir, state)
        return _result("up-to-date", ptr, out, installed, state, root)

    # 6. (cont.) download with a cap and a streaming sha256
    zip_path = tmp_dir / "bundle.zip"
    with open(zip_path, "xb") as f:
        digest, size = src.download(ptr.bundle.path, f, ptr.bundle.size)
    if size < ptr.bundle.size:  # the transfer stopped early: a network problem, nothing to distrust yet
        raise fetch.RegistryUnavailable(
            f"the download of {ptr.bundle.path} ended after {size} of the {ptr.bundle.size} bytes the signed "
            f"pointer names{keep}",
            hint="retry; nothing was installed",
        )
    if size != ptr.bundle.size or digest != ptr.bundle.sha256:
        raise VerificationError(
            f"{ptr.bundle.path} is {size} bytes with sha256 {digest[:16]}…; the signed pointer says "
            f"{ptr.bundle.size} bytes, {ptr.bundle.sha256[:16]}…{keep}"
        )

    # 7-9. verify with the release key, then extract what we install and check it again
    manifest = trust.verify_release_bundle(
        zip_path, root, expect_name=model, expect_version=ptr.version, expect_platform=platform, work_dir=tmp_dir
    )
    staged = tmp_dir / "extract"
    safe_extract(zip_path, staged)
    kid = trust.bundle_signer_hint(zip_path)
    with trust.pem_file(root.pems[kid if kid in root.pems else root.roles["release"].keyids[0]], tmp_dir) as pub:
        verify_directory(staged, pub)
    decrypted = False
    from mobex.registry import encryption

    if encryption.is_encrypted(manifest):
        if decryption_key is None:
            raise UsageError(
                f"{manifest.bundle_filename()} has encrypted model files",
                hint=f"pass --decryption-key-file FILE or set ${encryption.ENV_VAR}",
            )
        encryption.decrypt_tree(staged, manifest, decryption_key)
        decrypted = True

    # 11. atomic swap, keep N-1, then persist the sequence
    bundles = fsutil.ensure_dir(out, BUNDLES)
    name = f"{ptr.version}-{ptr.bundle.sha256[:12]}-s{ptr.sequence}"
    final = bundles / name
    if final.exists() or final.is_symlink():
        final = bundles / f"{name}-{secrets.token_hex(4)}"
    os.rename(staged, final)
    old_current = _link_target(out / CURRENT)
    if old_current is not None:
        _replace_symlink(out / PREVIOUS, old_current)
    _replace_symlink(out / CURRENT, f"{BUNDLES}/{final.name}")
    new_installed = {
        "model": model,
        "channel": channel,
        "platform": platform,
        "version": ptr.version,
        "sequence": ptr.sequence,
        "sha256": ptr.bundle.sha256,
        "dir": f"{BUNDLES}/{final.name}",
        "decrypted": decrypted,
    }
    if installed:
        state["previous"] = installed
    state["installed"] = new_installed
    _remember(state, channel_ids, ident, ptr, got, envelope, root, anchor)
    _save_state(state_dir, state)
    _cleanup(out, keep={final.name, Path(old_current).name if old_current else ""})
    return _result("installed", ptr, out, installed, state, root, decrypted=decrypted)


def check_pointer(
    envelope: bytes,
    root: trust.Root,
    *,
    model: str,
    channel: str,
    platform: str,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
    seen: dict[str, dict[str, dict]] | None = None,
    installed_version: str | None = None,
    rel: str = "channel pointer",
) -> tuple[Pointer, frozenset[str]]:
    """Steps 1-5 on pointer bytes, with no I/O: return the pointer and the channel key ids that signed it.

    `seen` maps channel key id -> {"model/channel/platform": {"sequence": n, "sha256": hex or None}}.
    `installed_version` is the version installed for this model and platform, if any.
    """
    ident = f"{model}/{channel}/{platform}"
    # 1. the channel key's signature
    env = dsse.parse(envelope, rel)
    payload, channel_ids = dsse.verify(
        env, dsse.POINTER_TYPE, root.role_keys("channel"), threshold=root.threshold("channel"), what=rel
    )
    ptr = Pointer.from_payload(payload, rel)
    # 2. the pointer is for what we asked
    if (ptr.model, ptr.channel, ptr.platform) != (model, channel, platform):
        raise VerificationError(
            f"{rel} is signed, but for {ptr.model}/{ptr.channel}/{ptr.platform}, not {ident}",
            hint="the server swapped pointers; the installed bundle is kept",
        )
    # 3. freeze
    if now > ptr.expires_at + skew:
        raise VerificationError(
            f"{rel} expired at {ptr.expires} (sequence {ptr.sequence})",
            hint="the registry must refresh its pointers (`mobex refresh`), or the server is replaying an old one",
        )
    # 4. rollback (replay) check, per channel key id
    for kid in channel_ids:
        last = (seen or {}).get(kid, {}).get(ident)
        if not last:
            continue
        if ptr.sequence < last["sequence"]:
            raise VerificationError(
                f"{rel} has sequence {ptr.sequence}, lower than {last['sequence']} already seen: "
                "a replayed old pointer",
                hint="a server or cache is serving a stale pointer; a real rollback has a higher sequence",
            )
        if ptr.sequence == last["sequence"] and last.get("sha256") and ptr.bundle.sha256 != last["sha256"]:
            raise VerificationError(
                f"{rel} sequence {ptr.sequence} names a different bundle than before: two pointers with one "
                "sequence mean the channel key is misused or stolen"
            )
    # 5. downgrade
    if installed_version is not None and semver_key(ptr.version) < semver_key(installed_version) and not ptr.downgrade:
        raise VerificationError(
            f"{rel} points to {ptr.version}, older than the installed {installed_version}, "
            "without being marked as a downgrade",
            hint="a real rollback is published with `mobex rollback` and signed by the release key",
        )
    if ptr.downgrade:
        dsse.verify(
            env, dsse.POINTER_TYPE, root.role_keys("release"), threshold=root.threshold("release"),
            what=f"{rel} (downgrade, needs the release key)",
        )  # fmt: skip
    return ptr, channel_ids


# --- state -----------------------------------------------------------------------------------


def read_state(out: Path) -> dict[str, Any]:
    """The pull state of `out` (installed, previous, sequences per key id), for apps and tests."""
    return _load_state(Path(out) / STATE_DIR)


def _anchor(pin: trust.Root) -> str:
    if pin.version == 0:
        return "key:" + next(iter(pin.pems))
    return "root:" + hashlib.sha256(pin.payload).hexdigest()


def _load_state(state_dir: Path) -> dict[str, Any]:
    path = state_dir / STATE_FILE
    if not path.exists():
        return {"schema": STATE_SCHEMA}
    try:
        state = json.loads(path.read_bytes())
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
            raise ValueError("unexpected schema")
        return state
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path} is unreadable ({exc})",
            hint="it records the last pointer sequences seen; restore it, or delete --out to start afresh",
        ) from exc


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    fsutil.atomic_write(state_dir / STATE_FILE, (json.dumps(state, indent=2, sort_keys=True) + "\n").encode())


def _remember(
    state: dict, channel_ids: frozenset[str], ident: str, ptr: Pointer, got: fetch.Fetched, envelope: bytes,
    root: trust.Root, anchor: str,
) -> None:  # fmt: skip
    for kid in channel_ids:
        state["sequences"].setdefault(kid, {})[ident] = {"sequence": ptr.sequence, "sha256": ptr.bundle.sha256}
    state["anchor"] = anchor
    state["root"] = base64.b64encode(root.payload).decode() if root.version > 0 else None
    state.setdefault("pointer_cache", {})[ident] = {
        "etag": got.etag,
        "envelope": base64.b64encode(envelope).decode(),
    }


def _installed_ok(out: Path, state: dict) -> bool:
    inst = state.get("installed")
    return bool(inst) and _link_target(out / CURRENT) == inst.get("dir") and (out / inst["dir"]).is_dir()


def _result(
    status: str,
    ptr: Pointer,
    out: Path,
    previous: dict | None,
    state: dict,
    root: trust.Root,
    *,
    decrypted: bool = False,
) -> PullResult:
    inst = state["installed"]
    return PullResult(
        status=status, model=ptr.model, channel=ptr.channel, platform=ptr.platform, version=ptr.version,
        sequence=ptr.sequence, sha256=ptr.bundle.sha256, path=str(out / inst["dir"]),
        previous_version=previous["version"] if previous and status == "installed" else None,
        downgrade=ptr.downgrade, decrypted=decrypted or bool(inst.get("decrypted")), root_version=root.version,
    )  # fmt: skip


# --- the --out folder ------------------------------------------------------------------------


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is not a directory")
    for name in (CURRENT, PREVIOUS):
        p = out / name
        if p.exists() and not p.is_symlink():
            raise UsageError(
                f"{p} exists and is not a symlink made by mobex pull",
                hint="use an empty folder (or one written by `mobex pull`) for --out",
            )
    for name in (BUNDLES, STATE_DIR):
        p = out / name
        if p.is_symlink():
            raise UsageError(f"{p} is a symlink; refusing to write through it")


def _link_target(link: Path) -> str | None:
    try:
        return os.readlink(link)
    except (FileNotFoundError, OSError):
        return None


def _replace_symlink(link: Path, target: str) -> None:
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    finally:
        if tmp.is_symlink():
            tmp.unlink()
    fsutil.fsync_dir(link.parent)


def _cleanup(out: Path, keep: set[str]) -> None:
    """Remove installed bundles other than current and previous."""
    bundles = out / BUNDLES
    for child in bundles.iterdir():
        if child.name in keep:
            continue
        if child.is_symlink() or child.is_file():
            child.unlink()
        else:
            shutil.rmtree(child, ignore_errors=True)
