"""Registry commands of the `mobex` CLI: publish, promote, rollback, refresh, serve, pull, trust.

`register(app)` adds them to the main Typer app (mobex/cli.py calls it). Like the other commands,
they import their modules lazily and raise mobex errors, which `mobex.cli.main` turns into one
message and an exit code (2 bad input, 5 failed verification, 1 registry unreachable, 7 nothing
this app version may install).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mobex.errors import UsageError

if TYPE_CHECKING:
    from mobex.registry.publish import PointerChange

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
RegistryOpt = Annotated[Path, typer.Option("--registry", help="The registry folder.")]
ExpiresOpt = Annotated[
    str, typer.Option("--expires", help="How long the new pointer stays valid: 14d, 12h, 30m (re-sign with refresh).")
]
PlatformOpt = Annotated[
    str | None, typer.Option("--platform", help="android or ios (default: every platform the channel has).")
]
RolloutOpt = Annotated[
    str | None,
    typer.Option(
        "--rollout",
        help="Ship to this fraction of devices only (0.1 or 10%; default 1). The others keep what the channel shipped.",
    ),
]
MinAppOpt = Annotated[
    str | None, typer.Option("--min-app-version", help="Apps older than this SemVer version do not get it.")
]

trust_app = typer.Typer(help="Key roles of a registry (root.json): init, rotate, show.", no_args_is_help=True)


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _signing_key(key: Path | None) -> Path:
    """--key, or the development key (with a warning), as `mobex build` does."""
    if key is not None:
        return key
    from mobex.bundle.keys import dev_key_path, ensure_dev_key

    path, _ = ensure_dev_key()
    typer.echo(f"warning: signing with the development key {dev_key_path()}; use --key for a real registry", err=True)
    return path


def _duration(text: str):  # noqa: ANN202
    from mobex.registry.pointer import parse_duration

    return parse_duration(text)


def _changes_text(changes) -> str:  # noqa: ANN001
    from mobex.registry.rollout import describe

    lines = []
    for c in changes:
        arrow = f"{c.previous_version} -> {c.version}" if c.previous_version else c.version
        flag = " (downgrade, release-signed)" if c.downgrade else ""
        if c.rollout_ppm is not None:
            flag += f", rollout {describe(c.rollout_ppm)} (other devices keep {c.fallback_version})"
        if c.min_app_version:
            flag += f", apps {c.min_app_version} or later"
        lines.append(f"{c.model} {c.channel}/{c.platform}: {arrow}, sequence {c.sequence}{flag}")
    return "\n".join(lines)


def _print_changes(changes: list[PointerChange], as_json: bool) -> None:
    """promote, rollback and refresh report their pointer changes the same way."""
    if as_json:
        _print_json([c.__dict__ for c in changes])
    else:
        typer.echo(_changes_text(changes))


def publish(
    bundle: Annotated[Path, typer.Argument(help="A signed bundle .zip (from `mobex build`).")],
    registry: RegistryOpt,
    channel: Annotated[str, typer.Option("--channel", help="Channel to point at the new version.")] = "beta",
    key: Annotated[
        Path | None, typer.Option("--key", help="Channel signing key (PEM). Default: the development key.")
    ] = None,
    expires: ExpiresOpt = "14d",
    encrypt: Annotated[
        bool, typer.Option("--encrypt", help="Encrypt model files with $MOBEX_ENCRYPTION_KEY (AES-256-GCM).")
    ] = False,
    encryption_key_file: Annotated[
        Path | None, typer.Option("--encryption-key-file", help="Encrypt model files with the key in this file.")
    ] = None,
    rollout: RolloutOpt = None,
    min_app_version: MinAppOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a bundle to the registry as an immutable version and advance the channel to it."""
    from mobex.registry import encryption
    from mobex.registry.publish import publish as do_publish

    enc_key = None
    if encrypt or encryption_key_file is not None:
        enc_key = encryption.load_key(encryption_key_file)
        if enc_key is None:
            raise UsageError(
                f"--encrypt needs a key: set ${encryption.ENV_VAR} or pass --encryption-key-file",
                hint="generate one with `openssl rand -hex 32`; apps need the same key to decrypt",
            )
    result = do_publish(
        bundle, registry, channel, _signing_key(key), expires=_duration(expires), encryption_key=enc_key,
        rollout=rollout, min_app_version=min_app_version,
    )  # fmt: skip
    if as_json:
        _print_json(result.to_dict())
        return
    typer.echo(f"published {result.bundle_path} ({result.size} bytes, sha256 {result.sha256[:16]}…)")
    if result.pointer.moved:
        typer.echo(_changes_text([result.pointer]))
    else:
        typer.echo(f"note: {result.pointer.note}", err=True)


def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    registry: RegistryOpt,
    from_channel: Annotated[str, typer.Option("--from", help="Channel to copy from (e.g. beta).")],
    to_channel: Annotated[str, typer.Option("--to", help="Channel to point (e.g. stable).")],
    platform: PlatformOpt = None,
    key: Annotated[Path | None, typer.Option("--key", help="Channel signing key (PEM).")] = None,
    expires: ExpiresOpt = "14d",
    rollout: RolloutOpt = None,
    min_app_version: Annotated[
        str | None, typer.Option("--min-app-version", help="Override the source pointer's minimum app version.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Point one channel at the version another channel ships (never backwards), to every device or a fraction."""
    from mobex.registry.publish import promote as do_promote

    changes = do_promote(
        name, registry, from_channel, to_channel, _signing_key(key), platform=platform, expires=_duration(expires),
        rollout=rollout, min_app_version=min_app_version,
    )  # fmt: skip
    _print_changes(changes, as_json)


def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    registry: RegistryOpt,
    channel: Annotated[str, typer.Option("--channel", help="Channel to roll back.")],
    to: Annotated[str, typer.Option("--to", help="Published version to point the channel at.")],
    key: Annotated[Path, typer.Option("--key", help="Release signing key (PEM): downgrades need it.")],
    channel_key: Annotated[
        Path | None, typer.Option("--channel-key", help="Channel key, if it is not the release key.")
    ] = None,
    platform: PlatformOpt = None,
    expires: ExpiresOpt = "14d",
    min_app_version: Annotated[
        str | None,
        typer.Option("--min-app-version", help="Minimum app version (default: what the channel recorded for it)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Point a channel at an older version for every device: a new pointer (sequence + 1), a signed downgrade."""
    from mobex.registry.publish import rollback as do_rollback

    changes = do_rollback(
        name, registry, channel, to, key, channel_key=channel_key, platform=platform, expires=_duration(expires),
        min_app_version=min_app_version,
    )  # fmt: skip
    _print_changes(changes, as_json)


def refresh(
    name: Annotated[str, typer.Argument(help="Model name.")],
    registry: RegistryOpt,
    channel: Annotated[str, typer.Option("--channel", help="Channel whose pointers to re-sign.")],
    key: Annotated[Path | None, typer.Option("--key", help="Channel signing key (PEM).")] = None,
    release_key: Annotated[
        Path | None, typer.Option("--release-key", help="Release key, to re-sign a rollback pointer.")
    ] = None,
    platform: PlatformOpt = None,
    expires: ExpiresOpt = "14d",
    as_json: JsonFlag = False,
) -> None:
    """Re-sign a channel's pointers with a new expiry (run from CI before they expire)."""
    from mobex.registry.publish import refresh as do_refresh

    changes = do_refresh(
        name, registry, channel, _signing_key(key), release_key=release_key, platform=platform,
        expires=_duration(expires),
    )  # fmt: skip
    _print_changes(changes, as_json)


def serve(
    registry: RegistryOpt,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8000,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Require `Authorization: Bearer <token in this file>`.")
    ] = None,
) -> None:
    """Serve the registry read-only over HTTP (ETags, ranges, Bearer token)."""
    import logging

    from mobex.registry.server import RegistryServer, read_token_file

    token = read_token_file(token_file) if token_file else None
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    server = RegistryServer(registry, host, port, token)
    typer.echo(
        f"serving {registry} at {server.url}/ ({'token required' if token else 'no token'}); Ctrl-C stops", err=True
    )
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def pull(
    name: Annotated[str, typer.Argument(help="Model name.")],
    source: Annotated[str, typer.Option("--from", help="Registry URL (http[s]://...) or folder.")],
    key: Annotated[Path, typer.Option("--key", help="Pinned public key (root key, PEM) or a pinned root.json.")],
    out: Annotated[Path, typer.Option("--out", help="Install folder: out/current is the verified bundle.")],
    platform: Annotated[str, typer.Option("--platform", help="android or ios.")],
    channel: Annotated[str, typer.Option("--channel", help="Channel to follow.")] = "stable",
    token: Annotated[str | None, typer.Option("--token", help="Bearer token for the server.")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="Read the Bearer token from a file.")] = None,
    decryption_key_file: Annotated[
        Path | None,
        typer.Option("--decryption-key-file", help="Key for encrypted bundles (default: $MOBEX_ENCRYPTION_KEY)."),
    ] = None,
    max_bytes: Annotated[int, typer.Option("--max-bytes", min=1, help="Refuse bundles larger than this.")] = 2 << 30,
    device_id: Annotated[
        str | None,
        typer.Option(
            "--device-id",
            help="Stable id of this device, for staged rollouts (without it: the version outside the rollout).",
        ),
    ] = None,
    app_version: Annotated[
        str | None, typer.Option("--app-version", help="Version of the app that loads the model (min_app_version).")
    ] = None,
    deadline: Annotated[
        float, typer.Option("--deadline", min=0.001, help="Give up (exit 1) if fetching takes longer (seconds).")
    ] = 600.0,
    as_json: JsonFlag = False,
) -> None:
    """Fetch, verify and install what a channel ships; refuse replays, expired pointers and unsigned bytes."""
    from mobex.registry import encryption
    from mobex.registry.pull import pull as do_pull
    from mobex.registry.server import read_token_file

    if token and token_file:
        raise UsageError("pass --token or --token-file, not both")
    if token_file:
        token = read_token_file(token_file)
    result = do_pull(
        name, source, channel, platform, key, out, token=token,
        decryption_key=encryption.load_key(decryption_key_file), max_bundle_bytes=max_bytes, deadline_s=deadline,
        device_id=device_id, app_version=app_version,
    )  # fmt: skip
    if as_json:
        _print_json(result.to_dict())
        return
    why = _selection_text(result)
    if result.status == "up-to-date":
        typer.echo(f"{name} {channel}/{platform}: {result.version} is already installed at {out}/current{why}")
    else:
        was = f" (was {result.previous_version})" if result.previous_version else ""
        typer.echo(f"{name} {channel}/{platform}: installed {result.version}{was} at {out}/current, verified{why}")


def _selection_text(result) -> str:  # noqa: ANN001
    """Why a pull got the version it got, when the pointer is staged or the app too old."""
    from mobex.registry.rollout import describe

    if result.selected == "full":
        return ""
    staged = f"the {describe(result.rollout_ppm)} rollout of {result.pointer_version}" if result.rollout_ppm else ""
    return {
        "in-rollout": f"; this device is in {staged}",
        "outside-rollout": f"; this device is outside {staged}",
        "no-device-id": f"; no --device-id, so the version outside {staged}",
        "app-too-old": f"; the app is too old for {result.pointer_version}",
    }.get(result.selected, "")


@trust_app.command("init")
def trust_init(
    registry: RegistryOpt,
    root_key: Annotated[Path, typer.Option("--root-key", help="Root private key (PEM); keep it offline.")],
    release_key: Annotated[
        list[Path] | None, typer.Option("--release-key", help="Release public key (repeatable; default: root key).")
    ] = None,
    channel_key: Annotated[
        list[Path] | None, typer.Option("--channel-key", help="Channel public key (repeatable; default: root key).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Write root.json version 1 with separate root, release and channel keys (before the first publish)."""
    from mobex.registry.trust import init_root

    root = init_root(registry, root_key, release_keys=release_key or [], channel_keys=channel_key or [])
    _print_trust(root, as_json)


@trust_app.command("rotate")
def trust_rotate(
    registry: RegistryOpt,
    sign_key: Annotated[
        list[Path], typer.Option("--sign-key", help="Private key signing the new root: old and new root keys.")
    ],
    root_key: Annotated[list[Path], typer.Option("--root-key", help="Public root key of the new version.")],
    release_key: Annotated[list[Path], typer.Option("--release-key", help="Public release key of the new version.")],
    channel_key: Annotated[list[Path], typer.Option("--channel-key", help="Public channel key of the new version.")],
    as_json: JsonFlag = False,
) -> None:
    """Write root.json version N+1 (signed by the current root keys and the new ones)."""
    from mobex.registry.trust import rotate_root

    root = rotate_root(registry, sign_key, root_keys=root_key, release_keys=release_key, channel_keys=channel_key)
    _print_trust(root, as_json)


@trust_app.command("show")
def trust_show(registry: RegistryOpt, as_json: JsonFlag = False) -> None:
    """Print the registry's current root.json (after checking its whole chain)."""
    from mobex.registry.trust import load_registry_root

    root = load_registry_root(registry)
    if root is None:
        raise UsageError(f"{registry} has no root.json yet", hint="the first publish creates one")
    _print_trust(root, as_json)


def _print_trust(root, as_json: bool) -> None:  # noqa: ANN001
    data = {
        "version": root.version,
        "expires": root.expires,
        "roles": {name: {"keyids": list(r.keyids), "threshold": r.threshold} for name, r in root.roles.items()},
    }
    if as_json:
        _print_json(data)
    else:
        typer.echo(f"root.json version {root.version}")
        for name, r in data["roles"].items():
            typer.echo(f"  {name}: {', '.join(k[:16] + '…' for k in r['keyids'])} (threshold {r['threshold']})")


COMMANDS = {
    "publish": publish,
    "promote": promote,
    "rollback": rollback,
    "refresh": refresh,
    "serve": serve,
    "pull": pull,
}


def register(app: typer.Typer) -> None:
    """Add the registry commands to `app` (idempotent: commands already there are left alone)."""
    existing = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    for name, func in COMMANDS.items():
        if name not in existing:
            app.command(name)(func)
    if not any(g.name == "trust" for g in app.registered_groups):
        app.add_typer(trust_app, name="trust")
