"""Coverage table: every zoo architecture (scripts/coverage_zoo) through a real `mobex build`.

Each model gets a folder with its recipe and data (`coverage_zoo.prepare`), then
`python -m mobex build recipe.toml --out OUT --json` runs in a subprocess with the variants
android fp32, fp16, dynamic-int8 and ios fp32, fp16 (latency at one thread, 3 runs: the sweep is
about parity). report.json gives, per variant: converted?, parity (max abs error, cosine) on LiteRT
and on Core ML (MIL reference interpreter), gates, shipped, and the failure reason.

Usage:
    python scripts/coverage.py [--only a,b] [--family recurrent] [--fast] [--json-out FILE]
    python scripts/coverage.py --from-json FILE...   # print the table of earlier runs
    python scripts/coverage.py --zoo-table           # what each model covers, its data, what it needs

Results are appended to --json-out after every model, so a long sweep can be resumed (--resume).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

VARIANT_COLUMNS = [("android", "fp32"), ("android", "fp16"), ("android", "dynamic-int8"), ("ios", "fp32"),
                   ("ios", "fp16")]  # fmt: skip


def run_build(recipe: Path, out: Path, timeout: float) -> tuple[dict | None, float, str]:
    """`mobex build --no-cache` in a subprocess; (report.json or None, wall seconds, error text when no report).

    Without the build cache: every stage runs, so the sweep and scripts/bench_build.py time real builds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1", "LITERT_TORCH_SHOW_PROGRESS": "n"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "mobex", "build", str(recipe), "--out", str(out), "--json", "--no-cache"],
            capture_output=True, text=True, timeout=timeout, env=env, check=False,
        )  # fmt: skip
        error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    except subprocess.TimeoutExpired:
        error = f"build did not finish in {timeout:.0f} s"
    seconds = time.perf_counter() - start
    report_path = out / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    return report, seconds, error


def variant_cell(variant: dict | None) -> dict:
    """What the table shows for one variant: state (pass / fail / not run / conversion failed), numbers, reason."""
    if variant is None:
        return {"state": "missing", "reason": "not in the report"}
    parity = variant.get("parity") or {}
    cell = {
        "state": "pass" if variant["passed"] else "fail",
        "shipped": variant.get("shipped", False),
        "max_abs_error": parity.get("max_abs_error"),
        "cosine_min": parity.get("cosine_min"),
        "backend": variant.get("backend"),
        "status": variant["status"],
        "gates": {g["metric"]: {"value": g["value"], "limit": g["limit"], "passed": g["passed"]}
                  for g in variant.get("gates", [])},  # fmt: skip
        "export_seconds": variant.get("export_seconds"),
        "validate_seconds": variant.get("validate_seconds"),
    }
    status = variant["status"]
    if status.startswith("conversion failed"):
        cell["state"], cell["reason"] = "conversion failed", status.removeprefix("conversion failed: ")
    elif status.startswith(("not run", "failed to run")):
        cell["state"], cell["reason"] = "not run", status.removeprefix("not run: ")
    elif not variant["passed"]:
        failed = [g for g in variant.get("gates", []) if not g["passed"]]
        cell["reason"] = "; ".join(f"{g['metric']} {_num(g['value'])} (limit {_num(g['limit'])})" for g in failed)
    return cell


def run_entry(entry, workdir: Path, timeout: float) -> dict:  # noqa: ANN001 - ZooEntry
    from coverage_zoo import params, prepare

    folder = workdir / entry.name
    row: dict = {"model": entry.name, "family": entry.family, "task": entry.task, "covers": list(entry.covers),
                 "data": entry.data_note, "needs": entry.needs}  # fmt: skip
    try:
        row["params"] = params(entry.factory())
        recipe = prepare(entry, folder)
    except Exception as exc:  # noqa: BLE001 - a broken entry is a row, not a crash
        row.update(error=f"prepare: {type(exc).__name__}: {exc}", variants={})
        return row
    report, seconds, error = run_build(recipe, folder / "out", timeout)
    row["build_seconds"] = round(seconds, 1)
    if report is None:
        row.update(error=error or "no report.json", variants={})
        return row
    by_id = {v["id"]: v for v in report["variants"]}
    row["variants"] = {f"{p}/{q}": variant_cell(by_id.get(f"{p}/{q}")) for p, q in VARIANT_COLUMNS}
    row["status"] = report["status"]
    row["timings"] = report.get("timings", {})
    row["constant_outputs"] = [c["name"] for c in report.get("data_checks", [])
                               if c["name"].startswith("reference output") and not c["passed"]]  # fmt: skip
    return row


def fp32_both(row: dict) -> bool:
    """Both fp32 variants pass, against a reference output that varies (a constant one proves nothing)."""
    v = row.get("variants", {})
    passed = all(v.get(k, {}).get("state") == "pass" for k in ("android/fp32", "ios/fp32"))
    return passed and not row.get("constant_outputs")


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.5f}" if 0.9 <= abs(value) <= 1.0 else f"{value:.1e}"


def _cell_text(cell: dict) -> str:
    if cell.get("state") == "pass":
        return f"pass {_num(cell.get('max_abs_error'))}"
    reason = (cell.get("reason") or "").replace("|", "/").removeprefix("not run: ")
    if len(reason) > 90:
        reason = reason[:87] + "..."
    return f"**{cell.get('state')}**: {reason}"


def markdown(rows: list[dict]) -> str:
    head = "| model | family | params | " + " | ".join(f"{p} {q}" for p, q in VARIANT_COLUMNS) + " | fp32 both |"
    lines = [head, "|---|---|---:|" + "---|" * len(VARIANT_COLUMNS) + "---|"]
    for r in rows:
        if r.get("error"):
            cells = [f"**error**: {r['error'][:120]}"] + [""] * (len(VARIANT_COLUMNS) - 1)
        else:
            cells = [_cell_text(r["variants"][f"{p}/{q}"]) for p, q in VARIANT_COLUMNS]
        verdict = "yes" if fp32_both(r) else ("no: constant reference output" if r.get("constant_outputs") else "no")
        lines.append(f"| {r['model']} | {r['family']} | {r.get('params', 0):,} | " + " | ".join(cells)
                     + f" | {verdict} |")  # fmt: skip
    passed = sum(fp32_both(r) for r in rows)
    lines.append("")
    share = 100 * passed / max(len(rows), 1)
    lines.append(f"fp32 parity passing on both targets: {passed} of {len(rows)} ({share:.0f} %). "
                 "Cells: gates passed and the variant's max abs error against torch, or why not.")  # fmt: skip
    return "\n".join(lines)


def zoo_table(entries: list) -> str:
    """What each zoo model covers, where its data comes from, and what issue 13 parts 4-6 would add for it."""
    lines = ["| model | task | covers | data | needs (issue 13 parts 4-6) |", "|---|---|---|---|---|"]
    for e in entries:
        needs = e.needs or ("nothing: one output, judged by today's gates" if e.task in ("classification", "regression")
                            else "tensor parity is the right check")  # fmt: skip
        lines.append(f"| {e.name} | {e.task} | {', '.join(e.covers)} | {e.data_note} | {needs} |")
    return "\n".join(lines)


def _zoo_names() -> list[str]:
    from coverage_zoo import ZOO

    return list(ZOO)


def _selected(args: argparse.Namespace) -> list:
    from coverage_zoo import ZOO

    names = args.only.split(",") if args.only else list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise SystemExit(f"unknown zoo model(s) {unknown}; known: {', '.join(ZOO)}")
    entries = [ZOO[n] for n in names]
    if args.family:
        entries = [e for e in entries if e.family in args.family.split(",")]
    if args.fast:
        entries = [e for e in entries if e.fast]
    return entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated zoo model names")
    parser.add_argument("--family", help="comma-separated families (recurrent, activation, detection, ...)")
    parser.add_argument("--fast", action="store_true", help="only the fast subset the default tests build")
    parser.add_argument("--json-out", type=Path, help="write the rows here (JSON lines, one per model)")
    parser.add_argument("--resume", action="store_true", help="skip models already in --json-out")
    parser.add_argument("--from-json", type=Path, nargs="+", help="print the table of earlier --json-out files")
    parser.add_argument("--zoo-table", action="store_true", help="print what each model covers and needs, and exit")
    parser.add_argument("--keep", type=Path, help="keep the build folders here")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per build (default 900)")
    args = parser.parse_args(argv)
    if args.from_json:
        rows = [json.loads(line) for path in args.from_json for line in path.read_text().splitlines() if line.strip()]
        latest = {r["model"]: r for r in rows}  # a model built again in a later file: its last row counts
        order = {name: i for i, name in enumerate(_zoo_names())}
        print(markdown(sorted(latest.values(), key=lambda r: order.get(r["model"], len(order)))))
        return 0
    if args.zoo_table:
        print(zoo_table(_selected(args)))
        return 0
    import torch

    torch.set_num_threads(1)  # training the small entries: one thread, the machine is shared
    entries = _selected(args)
    done: dict[str, dict] = {}
    if args.resume and args.json_out and args.json_out.is_file():
        done = {r["model"]: r for r in map(json.loads, args.json_out.read_text().splitlines()) if r}
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobex-coverage-") as tmp:
        workdir = args.keep or Path(tmp)
        for entry in entries:
            if entry.name in done:
                rows.append(done[entry.name])
                continue
            row = run_entry(entry, workdir, args.timeout)
            rows.append(row)
            verdict = "fp32 ok on both" if fp32_both(row) else "see table"
            print(f"{entry.name}: {verdict} ({row.get('build_seconds', 0)} s)", file=sys.stderr, flush=True)
            if args.json_out:
                with args.json_out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
