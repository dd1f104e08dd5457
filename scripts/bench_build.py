"""Build time of zoo models with the recipe defaults (android fp32 + dynamic-int8, ios fp16), per stage and variant.

Each model gets a folder from `coverage_zoo.prepare` with the default variants and the default latency
settings (threads 1 and 4, 50 runs), then `python -m mobex build` runs in a subprocess: the wall time
includes process start and every import, as a user sees it. Per stage from report.json `timings`,
per variant `export_seconds` / `validate_seconds`.

    python scripts/bench_build.py [--only a,b] [--all] [--lstm [--stock]]

`--lstm` times only `convert_tflite` of the 3-layer LSTM speaker encoder over 160 frames (issue 13's
case); with `--stock` also litert-torch's own lowering of it, in the same run (minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

# Representative models up to 5 M parameters: the largest of each family and issue 13's slow cases.
DEFAULT_SET = ("prelu_conv2d", "lstm_cell_loop", "speaker_lstm3_160", "pitch_cnn", "face_fcn_240x320", "vad_stream",
               "unet_convtranspose", "text_torch_transformer", "hf_mobilevitv2", "hf_roberta")  # fmt: skip
STAGES = ("data checks", "load model", "reference run", "export", "export tflite", "export coreml", "validate",
          "bundle + sign")  # fmt: skip


def bench_model(name: str, workdir: Path) -> dict:
    from coverage_zoo import DEFAULT_VARIANTS, ZOO, coverage_script, params, prepare

    entry = ZOO[name]
    recipe = prepare(entry, workdir / name, variants=DEFAULT_VARIANTS, quick_latency=False)
    report, seconds, error = coverage_script().run_build(recipe, workdir / name / "out", timeout=1800)
    row = {"model": name, "params": params(entry.factory()), "wall_seconds": round(seconds, 1), "error": error}
    if report is not None:
        row["status"] = report["status"]
        row["timings"] = report.get("timings", {})
        row["variants"] = {v["id"]: (v.get("export_seconds"), v.get("validate_seconds")) for v in report["variants"]}
        row["failed"] = {v["id"]: v["status"][:200] for v in report["variants"] if v["status"].startswith("conversion")}
    return row


def table(rows: list[dict]) -> str:
    head = "| model | params | wall s | " + " | ".join(STAGES) + " | per variant: export / validate s |"
    lines = [head, "|---|---:|---:|" + "---:|" * len(STAGES) + "---|"]
    for r in rows:
        t = r.get("timings", {})
        per = "; ".join(f"{k} {e or 0:.1f}/{v or 0:.1f}" for k, (e, v) in r.get("variants", {}).items())
        stages = " | ".join(f"{t[s]:.1f}" if s in t else "—" for s in STAGES)
        lines.append(f"| {r['model']} | {r['params']:,} | {r['wall_seconds']:.1f} | {stages} | {per or r['error']} |")
    return "\n".join(lines)


def bench_lstm(stock: bool) -> None:
    """convert_tflite of the speaker encoder (fixed lowering) and, with `stock`, litert-torch's own path."""
    import torch
    from coverage_zoo import ZOO

    from mobex.converters import tflite_lowering
    from mobex.converters.tflite import convert_tflite

    torch.set_num_threads(1)
    model, x = ZOO["speaker_lstm3_160"].factory(), torch.randn(1, 160, 40)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        convert_tflite(model, {"mels": x}, Path(tmp) / "fixed.tflite")
        fixed = time.perf_counter() - start
        print(f"convert_tflite, 3-layer LSTM x 160 steps, mobex lowering: {fixed:.1f} s")
        if stock:
            import litert_torch

            tflite_lowering.uninstall()
            start = time.perf_counter()
            litert_torch.convert(model.eval(), (x,)).export(str(Path(tmp) / "stock.tflite"))
            seconds = time.perf_counter() - start
            tflite_lowering.install()
            print(f"litert-torch's own lowering: {seconds:.1f} s ({seconds / fixed:.1f}x the mobex lowering)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated zoo model names (default: a representative set)")
    parser.add_argument("--all", action="store_true", help="every zoo model up to 5 M parameters")
    parser.add_argument("--lstm", action="store_true", help="time the 3-layer LSTM TFLite conversion only")
    parser.add_argument("--stock", action="store_true", help="with --lstm: litert-torch's own lowering too")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    args = parser.parse_args(argv)
    if args.lstm:
        bench_lstm(args.stock)
        return 0
    from coverage_zoo import ZOO

    names = args.only.split(",") if args.only else (list(ZOO) if args.all else list(DEFAULT_SET))
    rows = []
    with tempfile.TemporaryDirectory(prefix="mobex-bench-build-") as tmp:
        for name in names:
            rows.append(bench_model(name, Path(tmp)))
            print(f"{name}: {rows[-1]['wall_seconds']} s", file=sys.stderr, flush=True)
    print(json.dumps(rows, indent=2) if args.json else table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
