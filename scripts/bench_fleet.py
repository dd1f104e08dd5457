"""Wall time of a fleet build of the sample recipes: serial, the local process pool, and Ray, by worker count.

    python scripts/bench_fleet.py [--efficientnet] [--workers 2,3] [--ray-cpus 1,2,4] [--no-ray] [--json OUT]

Every run is `mobex build <recipes> --no-cache` in a fresh output folder (the cache would hide the work;
scripts/bench_cache.py measures it), with SOURCE_DATE_EPOCH fixed, and each checks that its bundles are
byte-identical (signatures aside) to the serial run's:
- serial: `--workers 1 --jobs 1`: one recipe after another, each export job inline, all in one process;
- pool N: `--workers N`: N recipes at once, each in a process of the local pool, each with its two
  export processes (android, ios);
- ray C: `--executor ray --workers <all recipes>` on a Ray cluster this script starts on 127.0.0.1
  with C logical CPUs: every recipe's export jobs and validations are Ray tasks of one CPU each, so at
  most C run at once.
The machine has 2 cores: beyond 2 workers (or Ray CPUs) nothing runs faster, processes only take turns,
and what parallelism buys is overlapping one recipe's waits (process start, imports) with another's work.
Timings on a shared machine vary from run to run: compare rows of one run, as ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("digits_cnn", "digits_vit", "tabular_mlp")
LOOPBACK = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # a single-node Ray cluster on 127.0.0.1


def recipes(efficientnet: bool) -> list[Path]:
    names = [*SMALL, "efficientnet_lite0"] if efficientnet else list(SMALL)
    paths = [ROOT / "sample_models" / n / "recipe.toml" for n in names]
    if efficientnet and not (ROOT / "sample_models/efficientnet_lite0/weights.safetensors").exists():
        sys.exit("efficientnet_lite0 has no weights: run sample_models/efficientnet_lite0/prepare.py first")
    return paths


def run(label: str, paths: list[Path], out: Path, extra: list[str], env: dict) -> dict:
    """One fleet build; its wall time, the CPU time of its processes (local runs) and exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "mobex", "build", *map(str, paths), "--out", str(out), "--no-cache", "--json", *extra],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if done.returncode not in (0, 4):
        sys.stderr.write(done.stderr[-2000:])
    print(f"{label}: {wall:.1f} s (exit {done.returncode})", file=sys.stderr, flush=True)
    return {"run": label, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "exit": done.returncode, "out": str(out)}


def bundles(out: Path) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.bundle_contents import unsigned_contents

    return unsigned_contents(out.glob("*/*.zip"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--efficientnet", action="store_true", help="include EfficientNet-Lite0 (~5 min a build)")
    parser.add_argument("--workers", default="2,3", help="pool sizes to time (comma-separated)")
    parser.add_argument("--ray-cpus", default="1,2,4", help="Ray cluster sizes to time (comma-separated)")
    parser.add_argument("--no-ray", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    paths = recipes(args.efficientnet)
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    env = {**os.environ, **LOOPBACK, "PYTHONPATH": str(ROOT), "SOURCE_DATE_EPOCH": "1700000000"}
    env["MOBEX_CONFIG_DIR"] = str(work / "config")  # a development key of its own
    rows = [run("serial", paths, work / "serial", ["--workers", "1", "--jobs", "1"], env)]
    for n in [int(x) for x in args.workers.split(",") if x]:
        rows.append(run(f"pool {n}", paths, work / f"pool{n}", ["--workers", str(n)], env))
    if not args.no_ray:
        rows += ray_rows(paths, work, env, [int(x) for x in args.ray_cpus.split(",") if x])
    reference = bundles(work / "serial")
    for row in rows:
        row["identical"] = bundles(Path(row["out"])) == reference and bool(reference)
    print_table(rows, len(paths))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def ray_rows(paths: list[Path], work: Path, env: dict, sizes: list[int]) -> list[dict]:
    os.environ.update(LOOPBACK)  # read when ray is imported (here, and by the cluster's processes)
    import ray

    rows = []
    for cpus in sizes:
        context = ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        try:
            address = context.address_info["gcs_address"]
            extra = ["--executor", "ray", "--ray-address", address, "--workers", str(len(paths))]
            # ray.init set RAY_AUTH_MODE=token here (ray 2.60 clusters use token authentication): a driver
            # started without it is refused ("cannot connect"), which is what the earlier Ray rows measured.
            ray_env = {**env, **{k: v for k, v in os.environ.items() if k.startswith("RAY_")}}
            rows.append(run(f"ray {cpus}", paths, work / f"ray{cpus}", extra, ray_env))
        finally:
            ray.shutdown()
    return rows


def print_table(rows: list[dict], count: int) -> None:
    serial = rows[0]["wall_s"]
    print(f"\nfleet of {count} recipes, --no-cache, {os.cpu_count()} cores\n")
    print("| run | wall s | speed-up vs serial | CPU s (local processes) | exit | bundles identical to serial |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        cpu = "" if r["run"].startswith("ray") else f"{r['cpu_s']:.1f}"
        same = "yes" if r["identical"] else "NO"
        print(f"| {r['run']} | {r['wall_s']:.1f} | {serial / r['wall_s']:.2f}x | {cpu} | {r['exit']} | {same} |")


if __name__ == "__main__":
    main()
