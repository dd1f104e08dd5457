"""Benchmark every variant a recipe lists: one table of size, zipped size, params, MACs, latency, agreement, gates.

    python scripts/bench_compression.py sample_models/digits_cnn/recipe.toml
    python scripts/bench_compression.py sample_models/efficientnet_lite0/recipe.toml --json bench.json

Runs the same stages as `mobex build` (export per platform, then the validator on the whole validation
split), in this process and without bundling, and keeps the exported files long enough to measure their
deflate-zipped size (what an app download costs). Params and MACs are the torch model's (after
[prune], which runs as in `mobex build`); quantization
changes bytes and arithmetic, not their count. Latency is the host CPU (LiteRT, XNNPACK), so compare
rows with each other; Core ML variants have no latency off macOS (validated in the MIL interpreter).
For int8, the float fallback chosen by the search (if any) is listed under the table. `--int8-steps`
also rebuilds the int8 variant one step at a time (plain recipe, + bias correction, + equalization, + the
recipe's range estimation, + GPTQ weight levels, + fallback) and prints each step's validation numbers;
every step decides on calibration data only.

    python scripts/bench_compression.py sample_models/efficientnet_lite0/recipe.toml --int8-steps

TFLite next to ExecuTorch (or any targets' variants side by side): `--variants` replaces one platform's
variant list for this run, `--platform` drops the other platform. `--rounds N` re-times every row that has
latency N more times, interleaved (each round times every row in turn), and reports the median of the
rounds' p50: on a shared, noisy machine the ratios between rows are what to compare.

    python scripts/bench_compression.py sample_models/efficientnet_lite0/recipe.toml --platform android \
        --variants fp32,int8,executorch:fp32,executorch:int8 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def zipped_size(path: Path) -> int:
    """Bytes of `path` (a file or an .mlpackage folder) in a deflate zip, level 9."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            archive.write(file, file.relative_to(path.parent))
    return len(buffer.getvalue())


def params_and_macs(model, example: dict) -> tuple[int, int | None]:  # noqa: ANN001
    """Parameters, and multiply-accumulates of one forward pass counted on the aten ops (FLOPs / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example.values())
        return params, int(counter.get_total_flops() // 2)
    except Exception:  # noqa: BLE001 - counting is best effort (exotic ops)
        return params, None


def human(n: float | None, unit: str = "") -> str:
    if n is None:
        return "-"
    for factor, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= factor:
            return f"{n / factor:.2f}{suffix}{unit}"
    return f"{n:.0f}{unit}"


# Cumulative int8 steps for --int8-steps: (label, Int8Options overrides on top of the recipe's options).
INT8_STEPS = [
    ("plain recipe, min/max", {"bias_correction": False, "equalize": False, "weight_rounding": "nearest",
                               "range_estimation": "minmax", "fallback": False}),
    ("+ bias correction", {"equalize": False, "weight_rounding": "nearest", "range_estimation": "minmax",
                           "fallback": False}),
    ("+ equalization", {"weight_rounding": "nearest", "range_estimation": "minmax", "fallback": False}),
    ("+ recipe's range estimation", {"weight_rounding": "nearest", "fallback": False}),
    ("+ GPTQ weight levels", {"fallback": False}),
]  # fmt: skip


def int8_steps(recipe, base, validation, reference, names, workdir: Path) -> list[dict]:  # noqa: ANN001
    """The int8 variant rebuilt step by step (INT8_STEPS), each validated like the real one."""
    from dataclasses import replace

    from mobex.data import load_validation_and_calibration
    from mobex.plugins import parse_request, target
    from mobex.targets.base import BuiltVariant
    from mobex.targets.tflite import int8_options, quantize_tflite
    from mobex.validate.validator import ValidationPlan, validate_variant

    _, calibration = load_validation_and_calibration(recipe)
    feeds = list(calibration.feeds())
    options = int8_options(recipe)
    plan = ValidationPlan.of(recipe, names)
    request = parse_request("android", "int8")
    steps = []
    for i, (label, overrides) in enumerate(INT8_STEPS):
        variant = quantize_tflite(
            base, "int8", workdir / f"step{i}.tflite", calibration=feeds, int8_io=recipe.android.int8_io,
            int8=replace(options, **overrides),
        )  # fmt: skip
        built = BuiltVariant(request, variant)
        report = validate_variant(built, plan, target("tflite").options(recipe), validation, reference).to_dict()
        steps.append({"step": label, "size_bytes": variant.size_bytes, "parity": report["parity"]})
    return steps


def select(recipe, platform: str | None, variants: list[str] | None):  # noqa: ANN001, ANN201 - Recipe
    """The recipe with only `platform`'s section (None: both) and, when given, that platform's variants replaced."""
    if platform is None:
        if variants:
            raise SystemExit("--variants needs --platform")
        return recipe
    section = getattr(recipe, platform)
    if section is None:
        raise SystemExit(f"{recipe.path} has no [{platform}] section")
    if variants:
        fields = {**section.model_dump(), "variants": variants, "ship": "smallest-passing"}
        section = type(section).model_validate(fields)
    others = {s.PLATFORM: None for s in recipe.sections() if s.PLATFORM != platform}
    return recipe.model_copy(update={platform: section, **others})


def interleaved_p50(rows: list[dict], made: list, validation, rounds: int, plan) -> None:  # noqa: ANN001
    """Re-time every row with latency `rounds` times, each round timing every row in turn; the median p50 of the
    rounds goes into the row as `p50_interleaved_ms` (one thread, the recipe's warmup and runs)."""
    import statistics

    from mobex import plugins
    from mobex.runtime.latency import measure_runner

    timed = [(row, built, options) for row, (built, options) in zip(rows, made, strict=True)
             if built is not None and row["report"]["latency"]]  # fmt: skip
    samples: dict[int, list[float]] = {id(row): [] for row, _, _ in timed}
    feed = validation.feed(0)
    for _ in range(rounds):
        for row, built, options in timed:
            make = plugins.target(built.request.target).latency_runner(built.artifact.path, options)
            stats = measure_runner(lambda m=make: m(1), feed, threads=1, warmup=plan.latency.warmup,
                                   runs=plan.latency.runs, batch=validation.batch)  # fmt: skip
            samples[id(row)].append(stats.p50_ms)
    for row, _, _ in timed:
        row["p50_interleaved_ms"] = statistics.median(samples[id(row)])
        row["p50_rounds_ms"] = samples[id(row)]


def run(recipe_path: Path, with_int8_steps: bool = False, platform: str | None = None,
        variants: list[str] | None = None, rounds: int = 0) -> dict:  # fmt: skip
    import torch

    from mobex.data import example_inputs, load_validation_and_calibration
    from mobex.export import plan_exports, run_export
    from mobex.recipe import load_recipe
    from mobex.sources import load_model
    from mobex.validate.validator import ValidationPlan, failed_export_report, run_reference, validate_variant

    torch.set_num_threads(1)
    recipe = select(load_recipe(recipe_path), platform, variants)
    validation, _ = load_validation_and_calibration(recipe)
    model = load_model(recipe)
    example = example_inputs(recipe, validation)
    workdir = Path(tempfile.mkdtemp(prefix="mobex-bench-"))
    pruned_path = None
    if recipe.prune is not None:  # as `mobex build` does: prune once, export and compare with the pruned model
        from mobex.prune.pruning import load_finetune_data, prune_model, save_pruned_model

        pruning = prune_model(model, recipe, example, load_finetune_data(recipe), validation)
        model = pruning.model
        pruned_path = str(save_pruned_model(model, example, workdir / "pruned.pt2"))
    params, macs = params_and_macs(model, example)
    reference = run_reference(model, recipe, validation)
    names = recipe.output_names(len(reference.outputs))
    rows = []
    made: list = []  # (BuiltVariant, target options) per row, None for a failed export
    steps: list[dict] = []
    try:
        plan = ValidationPlan.of(recipe, names)
        for job in plan_exports(recipe, workdir, names, pruned_path):
            started = time.perf_counter()
            exported = run_export(job)
            by_name = {b.request.spelled: b for b in exported.variants}
            for failure in exported.failures:
                report = failed_export_report(failure.request, failure.message, plan)
                rows.append({"report": report.to_dict(), "zipped_bytes": None, "int8": None})
                made.append((None, None))
            for built in exported.variants:
                report = validate_variant(built, plan, job.options, validation, reference)
                rows.append(
                    {
                        "report": report.to_dict(),
                        "zipped_bytes": zipped_size(built.artifact.path),
                        "int8": built.artifact.details,
                    }
                )
                made.append((built, job.options))
            if with_int8_steps and job.target == "tflite" and "fp32" in by_name and "int8" in by_name:
                steps = int8_steps(recipe, by_name["fp32"].artifact, validation, reference, names, workdir)
                int8_row = next(r for r in rows if r["report"]["id"] == "android/int8")
                steps.append(
                    {"step": "+ fallback search (the variant)", "size_bytes": int8_row["report"]["size_bytes"],
                     "parity": int8_row["report"]["parity"]}
                )  # fmt: skip
            print(f"{job.target}: exported and validated in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if rounds:
            interleaved_p50(rows, made, validation, rounds, plan)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "recipe": str(recipe.path),
        "params": params,
        "macs": macs,
        "reference": {"latency": reference.latency, "metrics": reference.metrics},
        "validation_samples": validation.num_samples,
        "variants": rows,
        "int8_steps": steps,
        "rounds": rounds,
    }


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result['recipe']} ({result['validation_samples']} validation samples)")
    for column in ("variant", "runtime", "size", "x base", "zipped", "params", "MACs", "p50 ms", "x fp32",
                   "top-1 agr.", "cosine min", "accuracy", "gates"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("variant", "gates") else "right")
    ref_latency = (result["reference"]["latency"] or {}).get("p50_ms")
    table.add_row(
        "torch (reference)", "torch", "-", "-", "-", human(result["params"]), human(result["macs"]),
        f"{ref_latency:.3f}" if ref_latency else "-", "-", "-", "-",
        _pct(result["reference"]["metrics"].get("accuracy")), "",
    )  # fmt: skip
    from mobex.plugins import default_target

    base_size = {}
    base_p50 = {}
    for row in result["variants"]:  # ratios are to the platform's default target (TFLite, Core ML)
        r = row["report"]
        if r["target"] != default_target(r["platform"]).name:
            continue
        if r["quantization"] in ("fp32", "fp16") and r["size_bytes"]:
            base_size.setdefault(r["platform"], {})[r["quantization"]] = r["size_bytes"]
        if r["quantization"] == "fp32" and _p50(row):
            base_p50[r["platform"]] = _p50(row)
    for row in result["variants"]:
        r = row["report"]
        parity = r["parity"] or {}
        sizes = base_size.get(r["platform"], {})
        ref = sizes.get("fp32" if r["platform"] == "android" else "fp16") or sizes.get("fp32")
        ratio = f"{r['size_bytes'] / ref:.3f}" if ref and r["size_bytes"] else "-"
        p50 = _p50(row)
        p50_ratio = f"{p50 / base_p50[r['platform']]:.2f}" if p50 and base_p50.get(r["platform"]) else "-"
        failed = [g["metric"] for g in r["gates"] if not g["passed"]]
        gates = "pass" if r["passed"] else "FAIL " + ",".join(failed)
        if r["status"] != "validated":
            gates = r["status"][:60]
        table.add_row(
            r["id"], r["backend"] or "-", human(r["size_bytes"], "B"), ratio, human(row["zipped_bytes"], "B"),
            human(result["params"]),
            human(result["macs"]), f"{p50:.3f}" if p50 else "-", p50_ratio, _pct(parity.get("top1_agreement")),
            f"{parity['cosine_min']:.4f}" if "cosine_min" in parity else "-", _pct(parity.get("accuracy")), gates,
        )  # fmt: skip
    console = Console(width=max(Console().width, 180))
    console.print(table)
    timing = (f"median of {result['rounds']} interleaved rounds' p50 (1 thread)" if result.get("rounds")
              else "p50 of the validation run (1 thread)")  # fmt: skip
    console.print(
        "x base: size over the fp32 .tflite (android) or the fp16 package (ios); x fp32: p50 over fp32 TFLite; "
        f"p50 ms: {timing}"
    )
    for row in result["variants"]:
        details = row["int8"]
        if details and details.get("fallback_layers"):
            names = ", ".join(layer["name"] if isinstance(layer, dict) else str(layer)
                              for layer in details["fallback_layers"])  # fmt: skip
            cost = details.get("cost", {})
            console.print(f"{row['report']['id']}: float fallback of {names}; cost {json.dumps(cost)}")


def print_steps(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if not result.get("int8_steps"):
        return
    table = Table(title="int8 step by step (validation split; each step decided on calibration data)")
    for column in ("step", "size", "top-1 agr.", "cosine min", "SNR dB"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step in result["int8_steps"]:
        parity = step["parity"] or {}
        snr = parity.get("snr_db")
        table.add_row(
            step["step"], human(step["size_bytes"], "B"), _pct(parity.get("top1_agreement")),
            f"{parity['cosine_min']:.4f}" if "cosine_min" in parity else "-", f"{snr:.1f}" if snr is not None else "-",
        )  # fmt: skip
    Console(width=max(Console().width, 120)).print(table)


def _p50(row: dict) -> float | None:
    """The row's interleaved p50 when measured (--rounds), else its validation run's."""
    return row.get("p50_interleaved_ms") or (row["report"]["latency"] or {}).get("p50_ms")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f} %"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--int8-steps", action="store_true", help="also rebuild int8 step by step (slower)")
    parser.add_argument("--platform", choices=("android", "ios"), help="only this platform's variants")
    parser.add_argument("--variants", help="comma-separated variants replacing --platform's list for this run")
    parser.add_argument("--rounds", type=int, default=0, help="re-time rows N times, interleaved (median p50)")
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if args.variants else None
    result = run(args.recipe, with_int8_steps=args.int8_steps, platform=args.platform, variants=variants,
                 rounds=args.rounds)  # fmt: skip
    print_table(result)
    print_steps(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
