"""ExecuTorch next to TFLite for one recipe: size, p50, top-1 agreement and the default gates of each variant.

    python scripts/bench_executorch.py sample_models/digits_cnn/recipe.toml
    python scripts/bench_executorch.py sample_models/efficientnet_lite0/recipe.toml --int8-steps --json et.json

Rows:
- tflite fp32 and tflite int8: the TFLite export job of `mobex build` (`plan_exports` / `run_export`), so
  int8 is the pipeline's own (its fallback search included);
- executorch fp32: `convert_executorch` (torch.export + XNNPACK);
- executorch int8, ExecuTorch default: XNNPACKQuantizer's per-channel static config as ExecuTorch ships it
  (histogram observers, its own annotation), calibrated on the recipe's calibration data, no fallback;
- executorch int8, mobex: `quantize_executorch` with the recipe's [quantization] (range estimation,
  equalization, fallback and its budget), the int8 gate limits and the held-out training samples;
- with `--int8-steps`, the steps in between (ReLU6 fused, the recipe's ranges, equalization, bias correction),
  each adding one piece, none with the fallback.

Every row is validated the same way on the whole validation split, each in its own runtime (LiteRT,
ExecuTorch), against the torch model, and judged by mobex's default gates for its family (`fp32`, `int8`)
plus the recipe's [gates]. p50 is one thread on the host CPU, measured interleaved: every round times
each row in turn, and the ratios are to TFLite fp32 in the same run (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROUNDS = 5


@dataclass
class Row:
    label: str
    target: str
    quantization: str
    path: Path
    size_bytes: int
    seconds: float
    int8: dict | None = None
    parity: dict = field(default_factory=dict)
    gates: list[dict] = field(default_factory=list)
    passed: bool = False
    p50_ms: float | None = None


def et_options(recipe: Any, **overrides: Any) -> Any:
    """EtInt8Options as `mobex build` makes them for `executorch:int8` (mobex.targets.executorch), overridden."""
    from dataclasses import replace

    from mobex.targets.executorch import et_int8_options

    return replace(et_int8_options(recipe), **overrides)


def int8_steps(recipe: Any, with_steps: bool) -> list[tuple[str, dict]]:
    """(label, EtInt8Options overrides) of the ExecuTorch int8 rows."""
    plain = {"equalize": False, "bias_correction": False, "fallback": False}
    default = {**plain, "range_estimation": "histogram", "fuse_relu6": False}
    rows = [("executorch int8, ExecuTorch default", default)]
    if with_steps:
        rows += [
            ("executorch int8, + ReLU6 fused", {**default, "fuse_relu6": True}),
            (f"executorch int8, + {recipe.quantization.range_estimation} ranges", plain),
            ("executorch int8, + equalization", {**plain, "equalize": True}),
            ("executorch int8, + bias correction", {"fallback": False}),
        ]
    return [*rows, ("executorch int8, mobex (+ fallback search)", {})]


def held_out_feeds(recipe: Any) -> list[dict] | None:
    """Every 10th training sample, as the pipeline's int8 search checks its candidates on them."""
    from mobex.targets.executorch import ExecutorchTarget, held_out_feeds

    return held_out_feeds(ExecutorchTarget().options(recipe), recipe)


def tflite_rows(recipe: Any, names: list[str], workdir: Path) -> list[Row]:
    from mobex.export import plan_exports, run_export

    android = type(recipe.android).model_validate({**recipe.android.model_dump(), "variants": ["fp32", "int8"],
                                                    "ship": "smallest-passing"})  # fmt: skip
    only = recipe.model_copy(update={"android": android, "ios": None})
    (job,) = plan_exports(only, workdir, names)
    exported = run_export(job)
    for failure in exported.failures:
        print(f"tflite {failure.request.name} failed: {failure.message}", file=sys.stderr)
    rows = []
    for built in exported.variants:
        v = built.artifact
        rows.append(Row(f"tflite {built.request.name}", "tflite", built.request.name, v.path, v.size_bytes, v.seconds))
    return rows


def executorch_rows(recipe: Any, model: Any, example: dict, names: list[str], workdir: Path, steps: bool) -> list[Row]:
    from mobex.converters.executorch import convert_executorch
    from mobex.data import load_validation_and_calibration
    from mobex.errors import ConversionError
    from mobex.quantize.executorch.recipes import quantize_executorch

    _, calibration = load_validation_and_calibration(recipe)
    fp32 = convert_executorch(model, example, workdir / "et-fp32.pte", output_names=names)
    rows = [Row("executorch fp32", "executorch", "fp32", fp32.path, fp32.size_bytes, fp32.seconds)]
    feeds, held = list(calibration.feeds()), held_out_feeds(recipe)
    for i, (label, overrides) in enumerate(int8_steps(recipe, steps)):
        options = et_options(recipe, **overrides)
        started = time.perf_counter()
        try:
            variant, details = quantize_executorch(
                model, example, workdir / f"et-int8-{i}.pte", calibration=feeds, output_names=names,
                options=options, held_out=held if options.fallback else None,
            )  # fmt: skip
        except ConversionError as e:  # one failed row must not cost the others (EfficientNet: an hour)
            print(f"{label}: FAILED after {time.perf_counter() - started:.0f} s: {e}", file=sys.stderr)
            continue
        print(f"{label}: {time.perf_counter() - started:.0f} s {details.to_dict()}", file=sys.stderr)
        row = Row(label, "executorch", "int8", variant.path, variant.size_bytes, variant.seconds, details.to_dict())
        rows.append(row)
    return rows


def runner_for(row: Row) -> Any:
    if row.target == "tflite":
        from mobex.runtime.litert import TfliteRunner

        return TfliteRunner(row.path, num_threads=1)
    from mobex.runtime.executorch import ExecutorchRunner

    return ExecutorchRunner(row.path, num_threads=1)


def validate(rows: list[Row], recipe: Any, validation: Any, reference: Any, names: list[str]) -> None:
    """Parity, task metrics and gates of every row on the whole validation split, by the validator of `mobex build`
    (mobex.validate.validator.validate_variant), each row in its own runtime."""
    from mobex.artifacts import ExportedVariant
    from mobex.plugins import parse_request, target
    from mobex.targets.base import BuiltVariant
    from mobex.validate.validator import ValidationPlan, validate_variant

    plan = ValidationPlan.of(recipe, names)
    for row in rows:
        spelled = row.quantization if row.target == "tflite" else f"{row.target}:{row.quantization}"
        runtime = target(row.target)
        inputs, outputs = runtime.read_io(row.path)
        variant = ExportedVariant(row.target, "android", row.quantization, row.path, inputs, outputs, row.size_bytes)
        built = BuiltVariant(parse_request("android", spelled), variant)
        result = validate_variant(built, plan, runtime.options(recipe), validation, reference)
        row.parity = {k: v for k, v in (result.parity or {}).items() if k != "outputs"}
        row.gates = list(result.gates)
        row.passed = result.passed


def interleaved_p50(rows: list[Row], feed: dict, runs: int) -> None:
    """Median latency of each row at one thread, the rows timed in turn for ROUNDS rounds."""
    import numpy as np

    from mobex.runtime.latency import measure

    runners = [runner_for(row) for row in rows]
    samples: list[list[float]] = [[] for _ in rows]
    for _ in range(ROUNDS):
        for i, runner in enumerate(runners):
            stats = measure(lambda r=runner: r.run(feed), threads=1, warmup=3, runs=runs)
            samples[i].extend(stats.samples_ms)
    for row, times in zip(rows, samples, strict=True):
        row.p50_ms = float(np.median(times))


def run(recipe_path: Path, steps: bool) -> dict:
    import torch

    from mobex.data import example_inputs, load_validation_and_calibration
    from mobex.recipe import load_recipe
    from mobex.sources import load_model
    from mobex.validate.validator import run_reference

    torch.set_num_threads(1)
    recipe = load_recipe(recipe_path)
    validation, _ = load_validation_and_calibration(recipe)
    model = load_model(recipe)
    example = example_inputs(recipe, validation)
    reference = run_reference(model, recipe, validation)
    names = recipe.output_names(len(reference.outputs))
    workdir = Path(tempfile.mkdtemp(prefix="mobex-bench-et-"))
    try:
        started = time.perf_counter()
        rows = tflite_rows(recipe, names, workdir)
        print(f"tflite: {time.perf_counter() - started:.0f} s", file=sys.stderr)
        rows += executorch_rows(recipe, model, example, names, workdir, steps)
        validate(rows, recipe, validation, reference, names)
        interleaved_p50(rows, validation.feed(0), max(recipe.latency.runs, 20))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    samples = validation.num_samples
    return {"recipe": str(recipe.path), "validation_samples": samples, "rows": [_row_dict(r) for r in rows]}


def _row_dict(row: Row) -> dict:
    return {
        "label": row.label, "target": row.target, "quantization": row.quantization, "size_bytes": row.size_bytes,
        "seconds": round(row.seconds, 1), "p50_ms": row.p50_ms, "parity": row.parity, "gates": row.gates,
        "passed": row.passed, "int8": row.int8,
    }  # fmt: skip


def print_table(result: dict) -> None:
    rows = result["rows"]
    base = next((r for r in rows if r["label"] == "tflite fp32"), rows[0])
    print(f"\n{result['recipe']} ({result['validation_samples']} validation samples; ratios to {base['label']})\n")
    print("| variant | size KiB | size × tflite fp32 | p50 ms | p50 × tflite fp32 | top-1 agr. | accuracy | gates |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        p = r["parity"]
        failed = [g["metric"] for g in r["gates"] if not g["passed"]]
        print(
            f"| {r['label']} | {r['size_bytes'] / 1024:.1f} | {r['size_bytes'] / base['size_bytes']:.3f} "
            f"| {r['p50_ms']:.3f} | {r['p50_ms'] / base['p50_ms']:.2f} | {_pct(p.get('top1_agreement'))} "
            f"| {_pct(p.get('accuracy'))} | {'pass' if r['passed'] else 'FAIL ' + ', '.join(failed)} |"
        )
    for r in rows:
        if r["int8"]:
            d = r["int8"]
            kept = ", ".join(d["fallback_layers"]) or "none"
            print(
                f"\n{r['label']}: {d['range_estimation']} ranges, {d['equalization'] or 'no equalization'}; "
                f"kept in float: {kept}; on calibration data: runtime {d['calibration_metrics']}, "
                f"torch twin {d['calibration_metrics_torch']}; {d['search_trials']} search trials in "
                f"{d['search_seconds']} s; {d['seconds']} s in all"
            )


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--int8-steps", action="store_true", help="also the ExecuTorch int8 steps in between")
    args = parser.parse_args()
    from mobex.runtime.executorch import require_executorch

    require_executorch("scripts/bench_executorch.py")
    result = run(args.recipe, args.int8_steps)
    print_table(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
