"""`mobex diff`: registered on the main app by `register(app)` (the release gate itself is `build --baseline`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)


def diff(
    old: Annotated[Path, typer.Argument(help="The previous bundle .zip.")],
    new: Annotated[Path, typer.Argument(help="The new bundle .zip.")],
    data: Annotated[
        Path | None, typer.Option("--data", help="An .npz with one array per input: run both models on it.")
    ] = None,
    key: Annotated[
        Path | None, typer.Option("--key", help="Release public key: verify both bundles first (needed for --data).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """What changed between two bundles: manifest, I/O contract, size, metrics; with --data, output agreement."""
    from mobex.logs import quiet_third_party_logs

    quiet_third_party_logs()
    from mobex.release.diff import diff_bundles

    result = diff_bundles(old, new, key=key, data=data)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
        return
    o, n = result.old, result.new
    typer.echo(f"{o['name']} {o['platform']}: {o['version']} -> {n['version']}"
               + ("" if result.verified else "  (NOT verified: pass --key PUB.pem)"))  # fmt: skip
    for line in result.changes or ["no change in the manifest"]:
        typer.echo(f"  {line}")
    if result.agreement is not None:
        typer.echo("  on --data: " + ", ".join(f"{k} {v:.6g}" for k, v in result.agreement.items()))
    if result.latency is not None:
        lat = result.latency
        p50 = f"{lat['previous_p50_ms']:.4g} -> {lat['new_p50_ms']:.4g} ms"
        typer.echo(f"  p50 {p50} (x{lat['ratio']:.3f}, interleaved)")
