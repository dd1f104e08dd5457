"""`mobex build A.toml B.toml ...` (or a workspace file): the fleet build's side of the command line.

`mobex build` hands over here when it gets several recipes or a workspace file (mobex.fleet); this
module prints the one summary table (or `--json`) and exits with the fleet's exit code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer


def single_recipe(paths: list[Path]) -> Path | None:
    """The recipe when the command line names exactly one recipe file (not a workspace), else None."""
    from mobex.fleet.workspace import is_workspace

    if len(paths) == 1 and not is_workspace(paths[0]):
        return paths[0]
    return None


def fleet_build(
    paths: list[Path],
    out: Path,
    key: Path | None,
    jobs: int,
    workers: int,
    executor: str,
    ray_address: str | None,
    cache: bool,
    source_date_epoch: int | None,
    as_json: bool,
) -> None:
    """Build every recipe, print the summary, exit with the worst recipe's exit code."""
    from rich.console import Console

    from mobex.fleet.run import FleetOptions, build_fleet
    from mobex.fleet.workspace import expand

    recipes = expand(paths)
    options = FleetOptions(out, key, jobs, workers, executor, ray_address, cache, source_date_epoch)
    console = Console(stderr=True)
    with console.status(f"building {len(recipes)} recipes, {workers} at a time ({executor})"):
        result = build_fleet(recipes, options)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        _print_summary(console, result)
    if key is None:
        from mobex.bundle.keys import dev_key_path

        console.print(
            f"[yellow]warning:[/yellow] signed with the development key {dev_key_path()}; use --key for releases."
        )
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def _print_summary(console, result) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title=f"{len(result.outcomes)} recipes in {result.seconds:.1f} s: exit {result.exit_code}")
    for col in ("recipe", "status", "exit", "shipped", "bundles", "cache (export hits)", "seconds"):
        table.add_column(col)
    for o in result.outcomes:
        exports = o.cache.get("export", {})
        hits = f"{exports.get('hit', 0)}/{sum(exports.values())}" if exports else ""
        shipped = ", ".join(f"{p}: {v}" for p, v in o.shipped.items())
        mark = {"passed": "[green]passed[/green]", "failed": "[red]failed[/red]"}.get(o.status, "[red]error[/red]")
        table.add_row(o.name, mark, str(o.exit_code), shipped, str(len(o.bundles)), hits, f"{o.seconds:.1f}")
    console.print(table)
    for o in result.outcomes:
        if o.exit_code:
            console.print(f"[red]{o.name}[/red]: {o.message.splitlines()[0] if o.message else 'failed'}")
    console.print(f"summary: {result.summary_path}, junit: {result.junit_path}")
