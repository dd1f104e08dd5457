"""`mobex drift` and `mobex validate`: registered on the main app by `register(app)`.

Kept out of cli.py so the validation commands live next to the code they drive; heavy imports
stay inside the commands, so `mobex --help` is still fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from mobex.errors import DRIFT_EXIT_CODE


def register(app: typer.Typer) -> None:
    """Add the validation commands to the `mobex` app."""
    app.command("drift")(drift)
    app.command("validate")(validate)


def validate(
    recipe: Annotated[Path, typer.Argument(help="The recipe TOML file (original model, data, gates).")],
    model: Annotated[Path, typer.Argument(help="An exported model: a .tflite or .pte file, or an .mlpackage folder.")],
    variant: Annotated[
        str, typer.Option("--variant", help="Which variant it is (fp32, fp16, int8, ...): picks the default gates.")
    ] = "fp32",
    allow_outside_paths: Annotated[
        bool, typer.Option("--allow-outside-paths", help="Let the recipe name files outside its folder.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Check an exported model against the recipe's original model: parity, task metrics, latency, gates.

    Exits 0 when every gate passes, 4 when one fails (as `mobex build` does).
    """
    from mobex.logs import quiet_third_party_logs
    from mobex.recipe_paths import allow_outside_paths as allow_paths

    allow_paths(allow_outside_paths)

    quiet_third_party_logs()
    from mobex.errors import GateFailed
    from mobex.recipe import load_recipe
    from mobex.validate.validator import validate_model_file

    report, reference = validate_model_file(load_recipe(recipe), model, variant)
    entry = report.to_dict()
    if as_json:
        sys.stdout.write(json.dumps({"reference": reference, "variant": entry}, indent=2, sort_keys=True) + "\n")
    else:
        _print_validation(entry, reference)
    if not report.passed:
        failed = [g["message"] for g in report.gates if not g["passed"]] or [report.status]
        raise GateFailed(f"{model}: " + "; ".join(failed))


def _print_validation(entry: dict, reference: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    p = entry.get("parity") or {}
    console.print(f"{escape(entry['id'])} ({escape(str(entry['backend']))}): {escape(entry['status'])}")
    table = Table(title="parity with the original model")
    for col in ("metric", "value", "original"):
        table.add_column(col)
    ref_metrics = reference.get("metrics") or {}
    for key in ("max_abs_error", "mean_abs_error", "max_rel_error", "cosine_min", "snr_db", "range_error_max",
                "top1_agreement", "top5_agreement", "accuracy", "f1", "mae", "rmse", "map50_agreement",
                "matched_iou_mean", "map50", "pixel_agreement", "miou_agreement", "miou", "recall_at_k"):  # fmt: skip
        if p.get(key) is not None:
            table.add_row(key, _num(p[key]), _num(ref_metrics.get(key)) if key in ref_metrics else "")
    lat = entry.get("latency") or {}
    if lat:
        table.add_row("p50_ms", _num(lat.get("p50_ms")), _num((reference.get("latency") or {}).get("p50_ms")))
    console.print(table)
    for gate in entry.get("gates", []):
        mark = "[green]pass[/green]" if gate["passed"] else "[red]FAIL[/red]"
        console.print(f"{mark} {escape(gate['message'])}")


def drift(
    bundle: Annotated[Path, typer.Argument(help="A bundle .zip built by mobex (it carries reference statistics).")],
    data: Annotated[Path, typer.Argument(help="New data: an .npz with one array per model input, samples first.")],
    key: Annotated[
        Path | None, typer.Option("--key", help="The signer's public key (PEM): verify the bundle before using it.")
    ] = None,
    psi: Annotated[float, typer.Option("--psi", help="PSI above this is drift (0.1 moderate, 0.2 large).")] = 0.2,
    ks_p: Annotated[
        float, typer.Option("--ks-p", help="Family-wise KS significance level (Bonferroni over the features).")
    ] = 0.01,
    inputs_only: Annotated[
        bool, typer.Option("--inputs-only", help="Compare the inputs only; do not run the model.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")] = False,
) -> None:
    """Compare new data with the validation data a bundle was checked on (PSI and KS per feature).

    Exits 0 when nothing drifted, 6 when any input or output feature crosses a threshold.
    """
    from mobex.logs import quiet_third_party_logs

    quiet_third_party_logs()
    from mobex.monitor.bundle_drift import check_bundle_drift

    report = check_bundle_drift(bundle, data, key=key, psi_threshold=psi, ks_p=ks_p, run_model=not inputs_only)
    if as_json:
        sys.stdout.write(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n")
    else:
        _print_drift(report)
    if report.drifted:
        raise typer.Exit(DRIFT_EXIT_CODE)


def _print_drift(report) -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    style = "green" if report.verified else "yellow"
    console.print(f"[{style}]{escape(report.verification)}[/{style}]")
    title = escape(f"drift of {Path(report.data).name} against {Path(report.bundle).name}: ") + (
        "[red]DRIFT[/red]" if report.drifted else "[green]no drift[/green]"
    )
    table = Table(title=title)
    for col in ("feature", "role", "samples", "ref mean", "new mean", "PSI", "KS D", "KS p", "verdict"):
        table.add_column(col, justify="left" if col in ("feature", "role", "verdict") else "right")
    for f in report.features:
        verdict = "[red]drift: " + escape("; ".join(f.reasons)) + "[/red]" if f.drifted else "[green]ok[/green]"
        table.add_row(
            escape(f.name),
            f.role,
            str(f.samples),
            _num(f.reference_mean),
            _num(f.mean),
            _num(f.psi),
            _num(f.ks_statistic),
            _num(f.ks_p),
            verdict,
        )
    console.print(table)
    console.print(
        f"thresholds: PSI > {report.psi_threshold:g}; KS p < {report.ks_p_per_test:.3g} per feature "
        f"(family-wise {report.ks_p:g}, Bonferroni)"
    )
    for note in report.notes:
        console.print(f"note: {escape(note)}")


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.4g}"
