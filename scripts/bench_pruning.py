"""Benchmark mobex's pruning on one recipe: what each method and sparsity costs and buys.

    python scripts/bench_pruning.py sample_models/digits_cnn/recipe.toml
    python scripts/bench_pruning.py RECIPE --configs structured:0.5,magnitude:0.8:per-layer --epochs 20 --lr 3e-3

For the unpruned model and each `method:sparsity[:scope]` (default scope: per-layer for structured,
global for magnitude) it prunes with `mobex.prune.pruning.prune_model`, fine-tunes on the recipe's
training data (the recipe's [prune.finetune] settings, else --epochs/--lr/--batch-size), converts the
result to an fp32 .tflite with litert-torch and measures it with the LiteRT interpreter (XNNPACK, one
thread): params and MACs (dense, and non-zero: what a sparse kernel could skip), validation accuracy of
the original / pruned / fine-tuned model, accuracy of the .tflite (for a classifier without labels: top-1
agreement with the original model), file size, deflate-zipped size
(zeros from magnitude pruning compress) and p50 latency. Latency is measured in interleaved rounds
(every model once per round, median of the per-round p50s) so that load from other processes on the
host hits all models alike. Every model, the original included, reaches the converter the way
`mobex build` hands a pruned model to its export workers (saved and loaded as an ExportedProgram).
Prints a rich table; --markdown also prints it as Markdown.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_CONFIGS = "structured:0.3,structured:0.5,magnitude:0.5,magnitude:0.8"


def _parse_configs(text: str) -> list[tuple[str, float, str]]:
    out = []
    for item in text.split(","):
        parts = item.strip().split(":")
        method, sparsity = parts[0], float(parts[1])
        scope = parts[2] if len(parts) > 2 else ("per-layer" if method == "structured" else "global")
        out.append((method, sparsity, scope))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument(
        "--configs", default=DEFAULT_CONFIGS, help=f"comma-separated method:sparsity[:scope] ({DEFAULT_CONFIGS})"
    )
    parser.add_argument(
        "--epochs", type=int, default=20, help="fine-tuning epochs when the recipe has no [prune.finetune]"
    )
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds")
    parser.add_argument("--runs", type=int, default=400, help="timed runs per model per round")
    parser.add_argument("--torch-threads", type=int, default=1, help="threads for pruning and fine-tuning in torch")
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.torch_threads)
    from mobex.converters.tflite import convert_tflite
    from mobex.data import load_dataset, load_validation_and_calibration
    from mobex.export import example_inputs
    from mobex.prune.macs import count_model
    from mobex.prune.pruning import load_pruned_model, prune_model, save_pruned_model
    from mobex.recipe import FinetuneSection, PruneSection, load_recipe
    from mobex.runtime.litert import TfliteRunner
    from mobex.runtime.torch_model import flatten_outputs
    from mobex.sources import load_model
    from mobex.validate.validator import run_all

    recipe = load_recipe(args.recipe)
    validation, _ = load_validation_and_calibration(recipe)
    training_path = (
        recipe.prune.finetune.data if recipe.prune and recipe.prune.finetune else None
    ) or recipe.data.training
    training = load_dataset(recipe, "training", training_path) if training_path and not args.no_finetune else None
    if recipe.prune is not None and recipe.prune.finetune is not None:
        finetune = recipe.prune.finetune
    else:
        finetune = FinetuneSection(epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size)
    if training is None:
        finetune = None
    model = load_model(recipe)
    inputs = example_inputs(recipe, validation)
    with torch.no_grad():
        names = recipe.output_names(len(flatten_outputs(model(*inputs.values()))))
    labels = validation.batch_labels()

    rows: list[dict] = []
    models: list[tuple[str, torch.nn.Module]] = [("original", model)]
    results = {}
    for method, sparsity, scope in _parse_configs(args.configs):
        key = f"{method} {sparsity:g} ({scope})"
        prune = PruneSection(method=method, sparsity=sparsity, scope=scope, finetune=finetune)
        start = time.perf_counter()
        result = prune_model(model, recipe.model_copy(update={"prune": prune}), inputs, training, validation)
        results[key] = (result, time.perf_counter() - start)
        models.append((key, result.model))

    with tempfile.TemporaryDirectory() as tmp:
        runners = {}
        for key, m in models:
            path = Path(tmp) / f"{len(runners)}.tflite"
            # the route `mobex build` takes (ExportedProgram hand-off), for the original too: the .tflite
            # then carries the same (short) tensor names for every row, so sizes compare weights only
            handed = load_pruned_model(save_pruned_model(m, inputs, Path(tmp) / f"{len(runners)}.pt2"))
            convert_tflite(handed, inputs, path, output_names=names)
            runners[key] = (path, TfliteRunner(path, num_threads=1))
        first = validation.feed(0)
        p50s: dict[str, list[float]] = {key: [] for key in runners}
        for _ in range(args.rounds):
            for key, (_, runner) in runners.items():
                for _ in range(50):
                    runner.run(first)
                times = np.empty(args.runs)
                for i in range(args.runs):
                    t = time.perf_counter()
                    runner.run(first)
                    times[i] = time.perf_counter() - t
                p50s[key].append(float(np.percentile(times, 50) * 1e3))
        base = count_model(model, tuple(inputs.values()))
        # Without labels a classifier is scored by top-1 agreement with the original (as prune_model does).
        agreement = labels is None and recipe.model.task == "classification"
        original_top1 = None
        for key, (path, runner) in runners.items():
            outs = run_all(runner.run, validation)
            top1 = outs[0].reshape(validation.num_samples, -1).argmax(1)
            original_top1 = top1 if original_top1 is None else original_top1  # "original" is the first row
            tflite_acc = None
            if labels is not None:
                tflite_acc = float(np.mean(top1 == labels))
            elif agreement:
                tflite_acc = float(np.mean(top1 == original_top1))
            data = path.read_bytes()
            row = {
                "config": key,
                "tflite_bytes": len(data),
                "tflite_zipped_bytes": len(zlib.compress(data, 9)),
                "tflite_p50_ms": float(np.median(p50s[key])),
                "tflite_accuracy": tflite_acc,
            }
            if key == "original":
                row.update(
                    params=base.params,
                    nonzero_params=base.nonzero_params,
                    macs=base.macs,
                    nonzero_macs=base.nonzero_macs,
                    accuracy_original=tflite_acc,
                    accuracy_pruned=None,
                    accuracy_finetuned=None,
                    seconds=0.0,
                )
            else:
                result, seconds = results[key]
                row.update(
                    params=result.after.params,
                    nonzero_params=result.after.nonzero_params,
                    macs=result.after.macs,
                    nonzero_macs=result.after.nonzero_macs,
                    accuracy_original=result.original,
                    accuracy_pruned=result.pruned,
                    accuracy_finetuned=result.finetuned,
                    left_alone=sorted(result.left_alone),
                    seconds=round(seconds, 2),
                )
            rows.append(row)
    metric = "agreement" if labels is None and recipe.model.task == "classification" else "acc."
    _print(recipe, rows, base, finetune, args.markdown, metric)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def _print(recipe, rows: list[dict], base, finetune, markdown: bool, metric: str = "acc.") -> None:  # noqa: ANN001
    from rich.console import Console
    from rich.table import Table

    ft = (
        "no fine-tuning"
        if finetune is None
        else (f"fine-tuning: {finetune.epochs} epochs, lr {finetune.learning_rate:g}, batch {finetune.batch_size}")
    )
    title = f"{recipe.model.name}: pruning ({ft})"
    headers = [
        "config",
        "params (non-zero)",
        "MACs",
        "non-zero MACs",
        f"{metric} original %",
        f"{metric} pruned %",
        f"{metric} fine-tuned %",
        f"TFLite {metric} %",
        "TFLite KiB",
        "zipped KiB",
        "TFLite p50 µs",
        "prune s",
    ]
    table_rows = []
    for r in rows:
        table_rows.append(
            [
                r["config"],
                f"{r['nonzero_params']:,}" + ("" if r["nonzero_params"] == r["params"] else f" / {r['params']:,}"),
                f"{r['macs']:,} ({r['macs'] / base.macs:.2f}x)",
                f"{r['nonzero_macs']:,} ({r['nonzero_macs'] / base.macs:.2f}x)",
                _pct(r["accuracy_original"]),
                _pct(r["accuracy_pruned"]),
                _pct(r["accuracy_finetuned"]),
                _pct(r["tflite_accuracy"]),
                f"{r['tflite_bytes'] / 1024:.1f}",
                f"{r['tflite_zipped_bytes'] / 1024:.1f}",
                f"{1000 * r['tflite_p50_ms']:.2f}",
                f"{r['seconds']:.1f}",
            ]
        )
    table = Table(title=title)
    for h in headers:
        table.add_column(h, justify="left" if h == "config" else "right")
    for tr in table_rows:
        table.add_row(*tr)
    Console(width=220).print(table)
    left = {r["config"]: r.get("left_alone") for r in rows if r.get("left_alone")}
    for config, layers in left.items():
        print(f"{config}: channels left alone in {', '.join(layers)}")
    if markdown:
        print(f"\n**{title}**\n")
        print("| " + " | ".join(headers) + " |")
        print("| " + " | ".join(["---"] + ["---:"] * (len(headers) - 1)) + " |")
        for tr in table_rows:
            print("| " + " | ".join(tr) + " |")


if __name__ == "__main__":
    main()
