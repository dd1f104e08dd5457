"""`mobex serve-model` and `mobex monitor`: registered on the main app by `register(app)`.

Like the other command modules, heavy imports happen inside the commands, and errors are mobex
errors that `mobex.cli.main` turns into one message and an exit code (2 bad input, 5 failed
verification, 6 when `monitor` finds a threshold crossed).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mobex.errors import DRIFT_EXIT_CODE, UsageError

JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]


def serve_model(
    bundle: Annotated[Path | None, typer.Argument(help="A signed bundle .zip (or --from a channel).")] = None,
    key: Annotated[Path, typer.Option("--key", help="Public key (PEM) the bundle must be signed with; with --from, "
                                                    "the pinned root key or root.json.")] = ...,  # fmt: skip
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port (0: any free port).")] = 8080,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="Require `Authorization: Bearer <token in this file>`.")
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, max=256, help="Inference threads.")] = 2,
    threads: Annotated[int, typer.Option("--threads", min=1, max=64, help="Threads per interpreter.")] = 1,
    timeout: Annotated[float, typer.Option("--timeout", min=0.001, help="Per-request timeout, seconds.")] = 10.0,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", min=1024, help="Request body cap.")] = 16 << 20,
    max_samples: Annotated[int, typer.Option("--max-samples", min=1, help="Samples per request at most.")] = 256,
    batch_delay_ms: Annotated[
        float, typer.Option("--batch-delay-ms", min=0, help="Dynamic batching delay (0: off; models with batch > 1).")
    ] = 0.0,
    telemetry: Annotated[Path | None, typer.Option("--telemetry", help="Append telemetry (JSON Lines).")] = None,
    source: Annotated[str | None, typer.Option("--from", help="Follow a registry (URL or folder) channel.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Model name in the registry (with --from).")] = None,
    channel: Annotated[str, typer.Option("--channel", help="Channel to follow (with --from).")] = "stable",
    platform: Annotated[str, typer.Option("--platform", help="Platform whose bundle to serve.")] = "android",
    poll: Annotated[float, typer.Option("--poll", min=0.05, help="Seconds between channel checks.")] = 30.0,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Pull state (sequences seen); default: a fresh temp folder.")
    ] = None,
    registry_token_file: Annotated[
        Path | None, typer.Option("--registry-token-file", help="Bearer token of an HTTP registry.")
    ] = None,
) -> None:
    """Serve a verified bundle as an inference API (predict, contract, health, metrics, OpenAPI)."""
    import logging

    from mobex.registry.server import read_token_file
    from mobex.serving.follow import ChannelSpec
    from mobex.serving.launch import default_state_dir, prepare
    from mobex.serving.service import ServeOptions

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if source is not None and name is None:
        raise UsageError("--from needs --name (the model to follow)")
    spec = None
    if source is not None:
        spec = ChannelSpec(
            source=source, name=name or "", channel=channel, platform=platform, key=key,
            state_dir=state_dir or default_state_dir(),
            token=read_token_file(registry_token_file) if registry_token_file else None,
        )  # fmt: skip
    options = ServeOptions(
        workers=workers, threads=threads, timeout_s=timeout, max_body_bytes=max_body_bytes, max_samples=max_samples,
        batch_delay_ms=batch_delay_ms, token=read_token_file(token_file) if token_file else None,
    )  # fmt: skip
    launch = prepare(options, host=host, port=port, bundle_zip=bundle, key=key, channel=spec, poll_s=poll,
                     telemetry=telemetry)  # fmt: skip
    model = launch.service.model
    batching = "dynamic batching on" if launch.service.batching_for(model) else "no batching"
    follows = f", following {source} {channel}/{platform} every {poll:g} s" if spec else ""
    typer.echo(
        f"serving {model.info.name} {model.info.version} (sha256 {model.info.sha256[:12]}) at {launch.server.url}/ "
        f"with {workers} workers, {batching}, {'token required' if options.token else 'no token'}{follows}; "
        "Ctrl-C stops",
        err=True,
    )
    sys.stderr.flush()
    if launch.follower is not None:
        launch.follower.start(launch.service)
    launch.server.serve_forever()  # on SIGINT/SIGTERM: graceful shutdown (lifespan stop), then uvicorn re-raises


def monitor(
    bundle: Annotated[Path, typer.Argument(help="The bundle .zip the telemetry is about.")],
    telemetry: Annotated[Path, typer.Argument(help="A telemetry .jsonl file, or a folder of them.")],
    key: Annotated[Path | None, typer.Option("--key", help="Verify the bundle signature first.")] = None,
    window: Annotated[str | None, typer.Option("--window", help="Window length: 1h, 30m, 1d (default 1h).")] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Thresholds from its [monitoring].")] = None,
    build_report: Annotated[
        Path | None, typer.Option("--build-report", help="The build's report.json: compare latency with the build.")
    ] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option("--max-accuracy-drop", help="Default 0.05.")] = None,
    max_f1_drop: Annotated[float | None, typer.Option("--max-f1-drop", help="Default 0.05.")] = None,
    max_precision_drop: Annotated[float | None, typer.Option("--max-precision-drop", help="Default: off.")] = None,
    max_recall_drop: Annotated[float | None, typer.Option("--max-recall-drop", help="Default: off.")] = None,
    psi: Annotated[float | None, typer.Option("--psi", help="Drift: PSI above this (default 0.2).")] = None,
    ks_p: Annotated[float | None, typer.Option("--ks-p", help="Drift: family-wise KS level (default 0.01).")] = None,
    max_latency_ratio: Annotated[
        float | None, typer.Option("--max-latency-ratio", help="Field p50/p99 over the build's (default 3).")
    ] = None,
    max_p50_ms: Annotated[float | None, typer.Option("--max-p50-ms", help="Default: off.")] = None,
    max_p99_ms: Annotated[float | None, typer.Option("--max-p99-ms", help="Default: off.")] = None,
    min_throughput: Annotated[float | None, typer.Option("--min-throughput", help="Per second; default off.")] = None,
    min_samples: Annotated[int | None, typer.Option("--min-samples", help="Fewer: no drift alert (100).")] = None,
    min_labels: Annotated[int | None, typer.Option("--min-labels", help="Fewer: no accuracy alert (30).")] = None,
    html: Annotated[Path | None, typer.Option("--html", help="Write an HTML report with time-series plots.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Field telemetry against what the build validated: task metrics, drift, latency. Exit 6 on an alert."""
    from mobex.files import write_atomic
    from mobex.monitor.html import render_monitor_html
    from mobex.monitor.report import run_monitor
    from mobex.monitor.thresholds import thresholds_from

    overrides = {
        "window": window, "max_accuracy_drop": max_accuracy_drop, "max_f1_drop": max_f1_drop,
        "max_precision_drop": max_precision_drop, "max_recall_drop": max_recall_drop, "psi": psi, "ks_p": ks_p,
        "max_latency_ratio": max_latency_ratio, "max_p50_ms": max_p50_ms, "max_p99_ms": max_p99_ms,
        "min_throughput_per_s": min_throughput, "min_samples": min_samples, "min_labels": min_labels,
    }  # fmt: skip
    try:
        thresholds = thresholds_from(recipe, overrides)
    except ValueError as exc:  # pydantic's ValidationError: a threshold out of range
        raise UsageError(f"invalid monitoring threshold: {exc}") from None
    report = run_monitor(bundle, telemetry, thresholds, key=key, build_report=build_report)
    data = report.to_dict()
    if html is not None:
        write_atomic(html, render_monitor_html(data).encode("utf-8"))
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        _print_monitor(data)
    for alert in report.alerts:
        typer.echo(f"alert: {alert['metric']}: {alert['message']}", err=True)
    if report.crossed:
        raise typer.Exit(DRIFT_EXIT_CODE)


def _print_monitor(data: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    rec = data["records"]
    console = Console(width=200)
    table = Table(title=escape(f"{data['model']['name']} {data['model']['version']}: {rec['used']} predictions, "
                               f"{rec['malformed']} malformed lines, window {data['window']}"))  # fmt: skip
    for col in ("window", "segment", "n", "labelled", "accuracy", "f1", "p50 ms", "p99 ms", "per s", "max PSI",
                "alerts"):  # fmt: skip
        table.add_column(col)
    for g in data["groups"]:
        cells = [g["window_start"], g["segment"], g["predictions"], g["labelled"], g["accuracy"], g["f1"],
                 g["p50_ms"], g["p99_ms"], g["throughput_per_s"], g["max_psi"]]  # fmt: skip
        text = [escape(c) if isinstance(c, str) else _num(c) for c in cells]
        table.add_row(*text, "[red]" + str(len(g["alerts"])) + "[/red]" if g["alerts"] else "0")
    console.print(table)
    if rec["malformed"]:
        console.print(escape(f"malformed lines: {rec['malformed_by_reason']}"))
    for note in data["notes"]:
        console.print(escape(f"note: {note}"))


def _num(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


COMMANDS = {"serve-model": serve_model, "monitor": monitor}


def register(app: typer.Typer) -> None:
    """Add serve-model and monitor to `app` (commands already there are left alone)."""
    existing = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    for cmd, func in COMMANDS.items():
        if cmd not in existing:
            app.command(cmd)(func)
