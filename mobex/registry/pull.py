"""`pull`: the client algorithm of bundles.md §5.2, step by step, as an app would run it.

0. Trust: start from what the caller pins (`--key`: a root public key, or a root.json), or from the
   newest root this `--out` folder verified before; walk `trust/<N+1>.root.json` forward.
1. GET the pointer (If-None-Match with the last ETag; a 304 reuses the cached copy, which is
   verified again like a fresh one). Verify its DSSE signature with the channel keys of that root.
2. Check that model, channel and platform are the ones asked for.
3. Freeze check: now <= expires + skew, else keep the installed bundle and fail.
4. Rollback check: sequence >= the last one seen for this pointer under this channel key id
   (`--out/.mobex/state.json`). Equal: nothing new, unless a different bundle (equivocation: refused).
5. Which version: a staged rollout gives the pointer's version to devices whose bucket
   (`--device-id`) is inside the fraction and its fallback to the others (and to a pull without a
   device id); `min_app_version` keeps a version from older apps (`--app-version`): they get the
   fallback if that fits, else NotEligible (exit 7). Then the downgrade check: a chosen version
   lower than the installed one needs `downgrade: true`, and any downgrade pointer needs a
   release-key signature too.
6. If the installed bundle has the chosen sha256, stop. Else download into `--out/.mobex/tmp`,
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
from typing import Any, NamedTuple

from mobex.bundle.archive import safe_extract
from mobex.bundle.signing import verify_directory
from mobex.errors import UsageError, VerificationError
from mobex.registry import dsse, fetch, fsutil, layout, trust
from mobex.registry.pointer import Pointer, semver_key
from mobex.registry.rollout import Choice, NotEligible, check_device_id, select

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
    version: str  # the version installed (the pointer's, or its fallback's)
    sequence: int
    sha256: str
    path: str  # the installed bundle folder (what `--out/current` points to)
    previous_version: str | None
    downgrade: bool
    decrypted: bool
    root_version: int
    selected: str = "full"  # why this version: full | in-rollout | outside-rollout | no-device-id | app-too-old
    pointer_version: str = ""  # the version the pointer rolls out (differs from `version` on a fallback)
    rollout_ppm: int | None = None  # the pointer's rollout fraction (parts per million), None when full

    def to_dict(self) -> dict:
        return asdict(self)


class Checked(NamedTuple):
    """A pointer that passed steps 1-5, and what this device installs from it."""

    pointer: Pointer
    channel_ids: frozenset[str]
    choice: Choice


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
    device_id: str | None = None,
    app_version: str | None = None,
    deadline_s: float | None = fetch.DEFAULT_DEADLINE_S,
) -> PullResult:
    """Install the bundle `channel` ships for `platform` into `out`, or fail leaving `out` as it was.

    `device_id` places this device in or out of a staged rollout (without it, a staged pointer
    gives the version devices outside the rollout get); `app_version` is checked against
    `min_app_version`. Everything fetched from the registry must arrive within `deadline_s` seconds
    in total (None: no limit).
    """
    layout.check_name(model)
    layout.check_channel(channel)
    layout.check_platform(platform)
    if device_id is not None:
        check_device_id(device_id)
    if app_version is not None:
        layout.check_version(app_version)
    now = now or datetime.now(UTC)
    pin = trust.load_pin(key)
    deadline = fetch.Deadline(deadline_s)
    src = fetch.open_source(source, token, deadline)
    out = Path(out)
    _check_out(out)
    state_dir = fsutil.ensure_dir(out, STATE_DIR)
    req = _Request(model, channel, platform, device_id, app_version)
    with fsutil.locked(state_dir, name="lock"):
        tmp_dir = state_dir / "tmp"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir()
        try:
            return _pull_locked(
                req, src, pin, out, state_dir, tmp_dir,
                decryption_key=decryption_key, now=now, skew=skew, max_bundle_bytes=max_bundle_bytes,
            )  # fmt: skip
        finally:
            deadline.cancel()
            shutil.rmtree(tmp_dir, ignore_errors=True)


@dataclass(frozen=True)
class _Request:
    model: str
    channel: str
    platform: str
    device_id: str | None
    app_version: str | None

    @property
    def ident(self) -> str:
        return f"{self.model}/{self.channel}/{self.platform}"


def _pull_locked(
    req: _Request,
    src: fetch.Source,
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
    rel = layout.pointer_path(req.model, req.channel, req.platform)
    cache = state.get("pointer_cache", {}).get(req.ident) or {}
    got = src.get(rel, dsse.MAX_ENVELOPE_BYTES, etag=cache.get("etag"))
    if got.not_modified and cache.get("envelope"):
        envelope = base64.b64decode(cache["envelope"])
    elif got.data is None:
        raise UsageError(
            f"{src.description} has no {req.channel} pointer for {req.model} ({req.platform})",
            hint="check the model name, --channel and --platform",
        )
    else:
        envelope = got.data
    installed = state.get("installed") if _installed_ok(out, state) else None
    keep = f"; keeping {installed['version']}" if installed else ""
    same_model = installed and installed["model"] == req.model and installed["platform"] == req.platform
    try:
        checked = check_pointer(
            envelope, root, model=req.model, channel=req.channel, platform=req.platform, now=now, skew=skew,
            seen=state.setdefault("sequences", {}), installed_version=installed["version"] if same_model else None,
            rel=rel, device_id=req.device_id, app_version=req.app_version,
        )  # fmt: skip
    except (VerificationError, NotEligible) as exc:
        raise type(exc)(exc.message + keep, hint=exc.hint) from exc
    ptr, choice = checked.pointer, checked.choice
    if choice.bundle.size > max_bundle_bytes:
        raise VerificationError(f"{rel} names a {choice.bundle.size}-byte bundle, over the {max_bundle_bytes} cap")

    # 6. nothing new?
    if installed and installed["sha256"] == choice.bundle.sha256:
        _remember(state, checked.channel_ids, req.ident, ptr, got, envelope, root, anchor)
        _save_state(state_dir, state)
        return _result("up-to-date", checked, out, installed, state, root)

    # 6-9. download, verify, extract and check again, decrypt
    staged, decrypted = _fetch_and_verify(req, src, root, choice, tmp_dir, decryption_key, keep)

    # 11. atomic swap, keep N-1, then persist the sequence
    final, old_current = _swap_in(out, staged, f"{choice.version}-{choice.bundle.sha256[:12]}-s{ptr.sequence}")
    if installed:
        state["previous"] = installed
    state["installed"] = {
        "model": req.model,
        "channel": req.channel,
        "platform": req.platform,
        "version": choice.version,
        "sequence": ptr.sequence,
        "sha256": choice.bundle.sha256,
        "dir": f"{BUNDLES}/{final.name}",
        "decrypted": decrypted,
    }
    _remember(state, checked.channel_ids, req.ident, ptr, got, envelope, root, anchor)
    _save_state(state_dir, state)
    _cleanup(out, keep={final.name, Path(old_current).name if old_current else ""})
    return _result("installed", checked, out, installed, state, root, decrypted=decrypted)


def _swap_in(out: Path, staged: Path, name: str) -> tuple[Path, str | None]:
    """Move the verified tree to `out/bundles/<name>`, point `previous` at the old current and `current` at it."""
    bundles = fsutil.ensure_dir(out, BUNDLES)
    final = bundles / name
    if final.exists() or final.is_symlink():
        final = bundles / f"{name}-{secrets.token_hex(4)}"
    os.rename(staged, final)
    old_current = _link_target(out / CURRENT)
    if old_current is not None:
        _replace_symlink(out / PREVIOUS, old_current)
    _replace_symlink(out / CURRENT, f"{BUNDLES}/{final.name}")
    return final, old_current


def _fetch_and_verify(
    req: _Request,
    src: fetch.Source,
    root: trust.Root,
    choice: Choice,
    tmp_dir: Path,
    decryption_key: bytes | None,
    keep: str,
) -> tuple[Path, bool]:
    """Steps 6-9: the chosen bundle downloaded (capped, hashed), verified, extracted, checked again, decrypted."""
    ref = choice.bundle
    zip_path = tmp_dir / "bundle.zip"
    with open(zip_path, "xb") as f:
        digest, size = src.download(ref.path, f, ref.size)
    if size < ref.size:  # the transfer stopped early: a network problem, nothing to distrust yet
        raise fetch.RegistryUnavailable(
            f"the download of {ref.path} ended after {size} of the {ref.size} bytes the signed pointer names{keep}",
            hint="retry; nothing was installed",
        )
    if size != ref.size or digest != ref.sha256:
        raise VerificationError(
            f"{ref.path} is {size} bytes with sha256 {digest[:16]}…; the signed pointer says "
            f"{ref.size} bytes, {ref.sha256[:16]}…{keep}"
        )
    manifest = trust.verify_release_bundle(
        zip_path, root, expect_name=req.model, expect_version=choice.version, expect_platform=req.platform,
        work_dir=tmp_dir,
    )  # fmt: skip
    staged = tmp_dir / "extract"
    safe_extract(zip_path, staged)
    kid = trust.bundle_signer_hint(zip_path)
    with trust.pem_file(root.pems[kid if kid in root.pems else root.roles["release"].keyids[0]], tmp_dir) as pub:
        verify_directory(staged, pub)
    from mobex.registry import encryption

    if not encryption.is_encrypted(manifest):
        return staged, False
    if decryption_key is None:
        raise UsageError(
            f"{manifest.bundle_filename()} has encrypted model files",
            hint=f"pass --decryption-key-file FILE or set ${encryption.ENV_VAR}",
        )
    encryption.decrypt_tree(staged, manifest, decryption_key)
    return staged, True


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
    device_id: str | None = None,
    app_version: str | None = None,
) -> Checked:
    """Steps 1-5 on pointer bytes, with no I/O: the pointer, the channel key ids that signed it, the choice.

    `seen` maps channel key id -> {"model/channel/platform": {"sequence": n, "sha256": hex or None}}.
    `installed_version` is the version installed for this model and platform, if any. The choice
    (step 5: rollout bucket and min_app_version, `rollout.select`) is what the downgrade check,
    the download and the install use.
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
    _check_sequence(ptr, channel_ids, seen or {}, ident, rel)
    # 5. which version this device gets (rollout bucket, min_app_version), then downgrade
    choice = select(ptr, device_id, app_version)
    older = installed_version is not None and semver_key(choice.version) < semver_key(installed_version)
    if older and not ptr.downgrade:
        why = "" if choice.reason == "full" else f" (for this device: {choice.reason} of {ptr.version})"
        raise VerificationError(
            f"{rel} points to {choice.version}{why}, older than the installed {installed_version}, "
            "without being marked as a downgrade",
            hint="a real rollback is published with `mobex rollback` and signed by the release key",
        )
    if ptr.downgrade:
        dsse.verify(
            env, dsse.POINTER_TYPE, root.role_keys("release"), threshold=root.threshold("release"),
            what=f"{rel} (downgrade, needs the release key)",
        )  # fmt: skip
    return Checked(ptr, channel_ids, choice)


def _check_sequence(ptr: Pointer, channel_ids: frozenset[str], seen: dict, ident: str, rel: str) -> None:
    """Step 4: refuse a lower sequence than seen before, or the same sequence naming another bundle."""
    for kid in channel_ids:
        last = seen.get(kid, {}).get(ident)
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
    checked: Checked,
    out: Path,
    previous: dict | None,
    state: dict,
    root: trust.Root,
    *,
    decrypted: bool = False,
) -> PullResult:
    inst = state["installed"]
    ptr, choice = checked.pointer, checked.choice
    return PullResult(
        status=status, model=ptr.model, channel=ptr.channel, platform=ptr.platform, version=choice.version,
        sequence=ptr.sequence, sha256=choice.bundle.sha256, path=str(out / inst["dir"]),
        previous_version=previous["version"] if previous and status == "installed" else None,
        downgrade=ptr.downgrade, decrypted=decrypted or bool(inst.get("decrypted")), root_version=root.version,
        selected=choice.reason, pointer_version=ptr.version,
        rollout_ppm=ptr.rollout.fraction_ppm if ptr.rollout else None,
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
