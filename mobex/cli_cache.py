"""`mobex cache info` and `mobex cache prune`: look at and bound the build cache (mobex.cache).

Registered on the main app by `register(app)`; nothing heavy is imported.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

cache_app = typer.Typer(
    name="cache",
    help="The build cache ($MOBEX_CACHE_DIR, else ~/.cache/mobex): what it holds, and pruning it.",
    no_args_is_help=True,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def register(app: typer.Typer) -> None:
    app.add_typer(cache_app)


@cache_app.command("info")
def info(as_json: JsonFlag = False) -> None:
    """Where the cache is, and how many entries and bytes it holds per kind."""
    from mobex.cache.store import CacheStore

    data = CacheStore().info()
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return
    typer.echo(f"cache: {data['path']}")
    for kind, k in sorted(data["kinds"].items()):
        typer.echo(f"  {kind:<11} {k['entries']:>6} entries  {_size(k['size_bytes']):>10}")
    typer.echo(f"  {'total':<11} {data['entries']:>6} entries  {_size(data['size_bytes']):>10}")


@cache_app.command("prune")
def prune(
    max_size: Annotated[
        str, typer.Option("--max-size", help="Keep at most this much (e.g. 2G, 500MiB; 0 empties the cache).")
    ],
    as_json: JsonFlag = False,
) -> None:
    """Remove the least recently used entries until the cache fits in --max-size."""
    from mobex.cache.store import CacheStore, parse_size

    result = CacheStore().prune(parse_size(max_size))
    data = {
        "removed": result.removed,
        "freed_bytes": result.freed_bytes,
        "kept": result.kept,
        "size_bytes": result.size_bytes,
    }
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        typer.echo(
            f"removed {result.removed} entries ({_size(result.freed_bytes)}); "
            f"{result.kept} left, {_size(result.size_bytes)}"
        )


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
