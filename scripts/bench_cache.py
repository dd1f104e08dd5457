"""What the build cache saves: one recipe built without the cache, into an empty cache, and again from it.

    python scripts/bench_cache.py [RECIPE] [--uncached] [--cache-dir DIR] [--warm-runs 3] [--json OUT]

RECIPE defaults to EfficientNet-Lite0 when its weights are there (sample_models/efficientnet_lite0/
prepare.py), else tabular_mlp. Each build is `mobex build RECIPE` in a fresh output folder, with
SOURCE_DATE_EPOCH fixed and the cache in DIR (default: a new folder of this run's own):
- uncached (with --uncached): `--no-cache`;
- cold: into the empty cache (the work of an uncached build, plus storing the entries); skipped when DIR
  already holds entries (filled by an earlier run: to time warm builds on a quieter machine);
- warm: the unchanged recipe again (median of --warm-runs builds), with where its wall time goes:
  interpreter start and `import mobex.cli` (timed alone), then report.json's stage timings.
It checks that the warm build's bundles are byte-identical (signatures aside) to those of the uncached or
cold build of this run, and that the warm build imported no torch, litert or coremltools module
(`python -X importtime`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "litert_torch", "ai_edge_litert", "coremltools", "ai_edge_quantizer")


def build(recipe: Path, out: Path, env: dict, *extra: str) -> tuple[float, dict, str]:
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "mobex", "build", str(recipe), "--out", str(out), "--json", *extra],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    wall = time.perf_counter() - start
    if done.returncode not in (0, 4):
        sys.exit(done.stderr[-3000:])
    report = json.loads((out / "report.json").read_text())
    print(f"{out.name}: {wall:.1f} s", file=sys.stderr, flush=True)
    return wall, report, done.stderr


def imported_heavy(importtime: str) -> list[str]:
    names = {line.split("|")[-1].strip() for line in importtime.splitlines() if line.startswith("import time:")}
    return sorted(n for n in names if n.split(".")[0] in HEAVY and "." not in n)


def startup(env: dict) -> float:
    """Interpreter start and `import mobex.cli`, the fixed cost of every `mobex` command (median of 3)."""
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import mobex.cli"], check=True, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bundles(out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.bundle_contents import unsigned_contents

    return unsigned_contents(out.glob("*.zip"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = ROOT / "sample_models/efficientnet_lite0/recipe.toml"
    if not (default.parent / "weights.safetensors").exists():
        default = ROOT / "sample_models/tabular_mlp/recipe.toml"
    parser.add_argument("recipe", type=Path, nargs="?", default=default)
    parser.add_argument("--uncached", action="store_true", help="also time a --no-cache build")
    parser.add_argument("--cache-dir", type=Path, help="the cache folder (default: a new one)")
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    cache = args.cache_dir or work / "cache"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1700000000"}
    env.update(MOBEX_CACHE_DIR=str(cache), MOBEX_CONFIG_DIR=str(work / "config"))
    uncached = build(args.recipe, work / "uncached", env, "--no-cache") if args.uncached else None
    filled = (cache / "builds").is_dir() and any((cache / "builds").rglob("meta.json"))
    cold = None if filled else build(args.recipe, work / "cold", env)
    warm = [build(args.recipe, work / f"warm{i}", env) for i in range(args.warm_runs)]
    median = sorted(warm, key=lambda w: w[0])[len(warm) // 2]
    fresh = work / ("uncached" if uncached else "cold")
    rows = {
        "recipe": str(args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe),
        "uncached_s": round(uncached[0], 1) if uncached else None,
        "cold_s": round(cold[0], 1) if cold else None,
        "warm_s": [round(w[0], 2) for w in warm],
        "startup_s": round(startup(env), 2),
        "warm_timings": median[1]["timings"],
        "warm_heavy_imports": imported_heavy(median[2]),
        "identical": (bool(bundles(fresh)) and bundles(fresh) == bundles(work / "warm0")) if fresh.is_dir() else None,
        "cache": {v["id"]: v["cache"] for v in median[1]["variants"]},
    }
    print_tables(rows, median[0])
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def print_tables(r: dict, warm: float) -> None:
    print(f"\n{r['recipe']}\n")
    print("| build | wall s |\n|---|---:|")
    if r["uncached_s"] is not None:
        print(f"| uncached (`--no-cache`) | {r['uncached_s']:.1f} |")
    if r["cold_s"] is not None:
        print(f"| cold (empty cache: build and store) | {r['cold_s']:.1f} |")
    print(f"| warm (unchanged recipe; median of {len(r['warm_s'])}: {r['warm_s']}) | {warm:.2f} |")
    print(f"\nwarm build, where the {warm:.2f} s go:\n\n| part | s |\n|---|---:|")
    print(f"| interpreter start + `import mobex.cli` | {r['startup_s']:.2f} |")
    timings = r["warm_timings"]
    for stage, seconds in timings.items():
        if stage != "total":
            print(f"| {stage} | {seconds:.2f} |")
    rest = warm - r["startup_s"] - timings.get("total", 0.0)
    print(f"| the rest (recipe parsing, reports moved, exit) | {rest:.2f} |")
    print(f"\nheavy modules imported by the warm build: {', '.join(r['warm_heavy_imports']) or 'none'}")
    same = {True: "yes", False: "NO", None: "not checked (no uncached or cold build in this run)"}[r["identical"]]
    print(f"bundles byte-identical to this run's uncached or cold build (signatures aside): {same}")
    hits = sum(1 for c in r["cache"].values() if c and c.get("export") == "hit" and c.get("validation") == "hit")
    print(f"variants from the cache: {hits}/{len(r['cache'])}")


if __name__ == "__main__":
    main()
