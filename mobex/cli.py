"""The `mobex` command line. Each command is a thin shell around a stage function.

Heavy libraries are imported inside the commands that need them, so `mobex --help`, `keygen`,
`verify` and `inspect` answer quickly. Every error a user can cause prints one clear message and
exits non-zero (2 for bad input, 3 for a failed conversion, 4 for failed gates, 5 for failed
verification, 6 when `mobex drift` finds drift).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from mobex.errors import MobexError

app = typer.Typer(
    name="mobex",
    help="Prune, quantize, export, validate and sign PyTorch models as TFLite, Core ML and ExecuTorch bundles.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OutsidePathsFlag = Annotated[
    bool,
    typer.Option(
        "--allow-outside-paths", help="Let the recipe name files outside its folder (only for recipes you trust)."
    ),
]


def _console():  # noqa: ANN202
    from rich.console import Console

    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160, soft_wrap=True)  # logs: no wrapping at 80 columns
    return console


def _print_json(data: object) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


@app.command()
def build(
    recipes: Annotated[
        list[Path], typer.Argument(help="The recipe TOML file; several, or workspace files listing them: a fleet.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for bundles and reports.")] = Path("dist"),
    key: Annotated[
        Path | None, typer.Option("--key", help="ECDSA P-256 private key (PEM). Default: a development key.")
    ] = None,
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Parallel export processes (one per target).")] = 2,
    baseline: Annotated[
        list[str] | None,
        typer.Option("--baseline", help="The release this one replaces: a bundle .zip (repeat per platform), or a "
                     "registry folder/URL with --baseline-channel. Checked against the recipe's [release] budgets."),
    ] = None,
    baseline_channel: Annotated[
        str | None, typer.Option("--baseline-channel", help="With a registry --baseline: the channel to compare with.")
    ] = None,
    baseline_key: Annotated[
        Path | None,
        typer.Option("--baseline-key", help="Verifies the baseline: the release public key for bundles (default: "
                     "the public half of --key), the registry's pinned root key for a registry."),
    ] = None,
    baseline_token_file: Annotated[
        Path | None, typer.Option("--baseline-token-file", help="Bearer token for a registry --baseline.")
    ] = None,
    allow_outside_paths: OutsidePathsFlag = False,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Neither reuse nor store build cache entries: run every stage.")
    ] = False,
    executor: Annotated[
        str, typer.Option("--executor", help="Where exports and validations run: local, or ray (a Ray cluster).")
    ] = "local",
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="The Ray cluster (default: $RAY_ADDRESS, else auto).")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="Fleet builds: recipes built at once.")] = 2,
    as_json: JsonFlag = False,
) -> None:
    """Convert, quantize, validate, gate, bundle and sign everything the recipe asks for (or each recipe's)."""
    from mobex.logs import quiet_third_party_logs
    from mobex.recipe_paths import allow_outside_paths as allow_paths

    allow_paths(allow_outside_paths)
    quiet_third_party_logs()
    from mobex.bundle.keys import load_private_key
    from mobex.cli_fleet import fleet_build, single_recipe

    if key is not None:
        load_private_key(key)  # fail on a bad key before minutes of work
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH")
    epoch = int(epoch_text) if epoch_text else None
    recipe = single_recipe(recipes)
    if recipe is None:  # several recipes, or a workspace file: mobex.fleet
        if baseline:
            from mobex.errors import UsageError

            raise UsageError(
                "--baseline compares one release with the one it replaces: pass one recipe",
                "gate each recipe of a fleet with its own `mobex build RECIPE --baseline ...`",
            )
        fleet_build(recipes, out, key, jobs, workers, executor, ray_address, not no_cache, epoch, as_json)
        return
    from mobex.fleet.run import make_executor
    from mobex.pipeline import BuildOptions
    from mobex.pipeline import build as run_build
    from mobex.recipe import load_recipe

    console = _console()
    parsed = load_recipe(recipe)
    token = None
    if baseline_token_file is not None:
        from mobex.registry.server import read_token_file

        token = read_token_file(baseline_token_file)
    options = BuildOptions(
        out_dir=out, key=key, jobs=jobs, source_date_epoch=epoch, baselines=baseline or [],
        baseline_channel=baseline_channel, baseline_key=baseline_key, baseline_token=token,
        cache=not no_cache, executor=make_executor(executor, ray_address),
    )  # fmt: skip
    with console.status("starting") as status:
        try:
            result = run_build(parsed, options, on_stage=lambda name: status.update(f"[bold]{name}[/bold]…"))
        except MobexError as exc:
            report_path = out / "report.json"
            if as_json and report_path.exists() and getattr(exc, "exit_code", 1) == 4:
                _print_json(_summary(json.loads(report_path.read_text())))
            raise
    if result.dev_key_created:
        from mobex.bundle.keys import dev_key_path

        console.print(
            f"[yellow]warning:[/yellow] signed with a new DEVELOPMENT key at {dev_key_path()} "
            "(and its .pub.pem). Apps must not trust it; use `mobex keygen` and `--key` for releases."
        )
    elif key is None:
        from mobex.bundle.keys import dev_key_path

        console.print(
            f"[yellow]warning:[/yellow] signed with the development key {dev_key_path()}; use --key for releases."
        )
    if as_json:
        _print_json(_summary(result.report))
    else:
        _print_table(console, result.report)
        for bundle in result.bundles:
            console.print(f"[green]bundle[/green] {bundle}")
        console.print(f"reports: {', '.join(str(p) for p in result.report_paths.values())}")


@app.command()
def export(
    recipe: Annotated[Path, typer.Argument(help="The recipe TOML file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the exported models.")] = Path("exported"),
    jobs: Annotated[int, typer.Option("--jobs", min=1, help="Parallel export processes (one per target).")] = 2,
    allow_outside_paths: OutsidePathsFlag = False,
    as_json: JsonFlag = False,
) -> None:
    """Convert and quantize every variant, without validation or bundles (use `build` to ship)."""
    from mobex.logs import quiet_third_party_logs
    from mobex.recipe_paths import allow_outside_paths as allow_paths

    allow_paths(allow_outside_paths)
    quiet_third_party_logs()
    from mobex.pipeline import export_only
    from mobex.recipe import load_recipe

    with _console().status("exporting"):
        written = export_only(load_recipe(recipe), out, jobs=jobs)
    if as_json:
        _print_json({"exported": [str(p) for p in written]})
    else:
        for path in written:
            typer.echo(str(path))
        typer.echo(
            "not validated: run `mobex build` (or `mobex validate RECIPE MODEL`) before shipping these", err=True
        )


def _summary(report: dict) -> dict:
    return {
        "status": report["status"],
        "failures": report["failures"],
        "rejected_variants": report.get("rejected_variants", []),
        "shipped": report["shipped"],
        "bundles": report["bundles"],
        "timings": report["timings"],
        "variants": [
            {
                "id": v["id"],
                "size_bytes": v["size_bytes"],
                "backend": v["backend"],
                "status": v["status"],
                "passed": v["passed"],
                "shipped": v["shipped"],
                "max_abs_error": (v["parity"] or {}).get("max_abs_error"),
                "top1_agreement": (v["parity"] or {}).get("top1_agreement"),
                "p50_ms": (v["latency"] or {}).get("p50_ms"),
            }
            for v in report["variants"]
        ],
    }


def _print_table(console, report: dict) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title=f"{report['recipe']['name']} {report['recipe']['version']}: {report['status']}")
    for col in (
        "variant",
        "size",
        "backend",
        "max abs err",
        "cosine min",
        "top-1 agree",
        "accuracy",
        "p50 ms",
        "gates",
    ):
        table.add_column(col)
    ref = report["reference"]
    table.add_row(
        "original (torch)",
        "",
        "torch",
        "",
        "",
        "",
        _num(ref["metrics"].get("accuracy")),
        _num((ref.get("latency") or {}).get("p50_ms")),
        "",
    )
    for v in report["variants"]:
        p = v["parity"] or {}
        mark = "[green]pass[/green]" if v["passed"] else "[red]FAIL[/red]"
        table.add_row(
            v["id"] + (" [bold](shipped)[/bold]" if v["shipped"] else ""),
            f"{v['size_bytes'] / 1024:.1f} KiB" if v["size_bytes"] else "",
            v["backend"] or v["status"][:40],
            _num(p.get("max_abs_error")),
            _num(p.get("cosine_min")),
            _num(p.get("top1_agreement")),
            _num(p.get("accuracy")),
            _num((v["latency"] or {}).get("p50_ms")),
            mark,
        )
    console.print(table)


def _num(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


@app.command()
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key path; the public key goes next to it as .pub.pem.")],
    as_json: JsonFlag = False,
) -> None:
    """Write an ECDSA P-256 signing key pair (files readable by you only)."""
    from mobex.bundle.keys import generate_keypair, public_key_fingerprint

    private, public = generate_keypair(out)
    info = {"private_key": str(private), "public_key": str(public), "fingerprint": public_key_fingerprint(public)}
    if as_json:
        _print_json(info)
    else:
        typer.echo(f"private key: {private}\npublic key:  {public}\nfingerprint: {info['fingerprint']}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="A bundle .zip.")],
    key: Annotated[Path, typer.Option("--key", help="The signer's public key (PEM).")],
    as_json: JsonFlag = False,
) -> None:
    """Check a bundle: safe archive, valid signature, every file matches the signed manifest."""
    from mobex.bundle.verify import verify_bundle

    manifest = verify_bundle(bundle, key)
    info = {
        "bundle": str(bundle),
        "verified": True,
        "name": manifest.name,
        "version": manifest.version,
        "platform": manifest.platform,
        "files": len(manifest.files),
    }
    if as_json:
        _print_json(info)
    else:
        typer.echo(
            f"OK: {bundle} is {manifest.name} {manifest.version} ({manifest.platform}), "
            f"{len(manifest.files)} files, signature valid"
        )


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="A bundle .zip.")],
    key: Annotated[Path, typer.Option("--key", help="The new signing key (ECDSA P-256 private key, PEM).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the re-signed bundle (default: in place).")
    ] = None,
    verify_with: Annotated[
        Path | None, typer.Option("--verify-with", help="Public key the bundle is signed with now: checked first.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Re-sign a bundle with another key (e.g. a release key after a CI build); contents are unchanged."""
    from mobex.bundle.resign import resign_bundle

    target = out or bundle
    manifest = resign_bundle(bundle, key, target, trusted_key=verify_with)
    checked = (
        "old signature verified"
        if verify_with
        else "old signature NOT verified (no --verify-with); files match the manifest"
    )
    if as_json:
        _print_json({"bundle": str(target), "name": manifest.name, "version": manifest.version, "checked": checked})
    else:
        typer.echo(f"signed {target} ({manifest.name} {manifest.version}, {manifest.platform}); {checked}")


@app.command()
def inspect(
    bundle: Annotated[Path, typer.Argument(help="A bundle .zip.")],
    key: Annotated[
        Path | None, typer.Option("--key", help="The signer's public key (PEM): verify before printing.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Print a bundle's manifest; with --key only after verifying the bundle (as `mobex verify` does)."""
    from mobex.bundle.verify import read_manifest, verify_bundle

    manifest = verify_bundle(bundle, key) if key is not None else read_manifest(bundle)
    data = manifest.model_dump(mode="json", by_alias=True)
    note = f"verified with {key}" if key is not None else "NOT verified: pass --key PUB.pem (or run `mobex verify`)"
    if as_json:
        _print_json({**data, "verified": key is not None, "verification": note})  # manifests have neither key
    else:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        typer.echo(f"({note})", err=True)


def _register_command_groups() -> None:
    """Commands that live in their own modules (registry, drift, serving); each adds itself to `app`."""
    from mobex.cli_cache import register as register_cache
    from mobex.cli_registry import register as register_registry
    from mobex.cli_release import register as register_release
    from mobex.cli_serving import register as register_serving
    from mobex.cli_validate import register as register_validate
    from mobex.init_recipe import register as register_init

    register_validate(app)
    register_init(app)
    register_registry(app)
    register_serving(app)
    register_release(app)
    register_cache(app)


_register_command_groups()


def main() -> None:
    """Console-script entry: run the app, turning MobexError into a message and an exit code."""
    try:
        # Without standalone mode click does not exit on `typer.Exit(code)`: it returns the code.
        code = app(standalone_mode=False)
    except MobexError as exc:
        # Plain text, never wrapped: CI logs and scripts grep these lines.
        sys.stderr.write(f"error: {exc.message}\n")
        if exc.hint:
            sys.stderr.write(f"  hint: {exc.hint}\n")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        sys.exit(130)
    except Exception as exc:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
    if isinstance(code, int) and code:
        sys.exit(code)
