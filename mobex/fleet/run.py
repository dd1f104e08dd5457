"""Fleet builds: many recipes, each built by `mobex.pipeline.build` into its own folder, several at once.

Each recipe is built in a process of a local pool (`workers` at a time; with `workers=1` one after another
in this process). With the Ray executor those per-recipe builds stay local drivers, and their export jobs
and validations run as Ray tasks on the cluster (mobex.fleet.ray_executor). A recipe that fails does not
stop the others. Afterwards one summary (`fleet.json`), one combined `junit.xml` and one exit code: the
worst of the recipes' (`worst_exit_code`).

Layout of `--out DIR`: `DIR/<model name>/` per recipe (its bundles and three reports, as a single
`mobex build`), `DIR/logs/<model name>.log` (what its build printed), `DIR/fleet.json`, `DIR/junit.xml`.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mobex.errors import GateFailed, MobexError, UsageError
from mobex.files import write_atomic

# Exit codes from least to most severe: the fleet exits with the most severe one any recipe gave.
# Gates that fail (4) are a verdict on a model; a conversion failure (3) means the build could not be done;
# bad input (2) that a recipe cannot be built at all; 1 an unexpected error; 5 failed verification (a bundle
# or signature that must not be trusted) is the worst.
EXIT_SEVERITY: tuple[int, ...] = (0, 4, 3, 2, 1, 5)
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class FleetOptions:
    out_dir: Path
    key: Path | None = None
    jobs: int = 2  # export processes per recipe (local executor)
    workers: int = 2  # recipes built at once
    executor: str = "local"
    ray_address: str | None = None
    cache: bool = True
    source_date_epoch: int | None = None


@dataclass(frozen=True)
class RecipeTask:
    """One recipe of the fleet, as a pool worker receives it (picklable)."""

    recipe: str
    name: str
    out_dir: str
    log: str | None  # None: build in this process, printing where it prints
    key: str
    jobs: int
    executor: str
    ray_address: str | None
    cache: bool
    source_date_epoch: int | None


@dataclass(frozen=True)
class RecipeOutcome:
    recipe: str
    name: str
    out_dir: str
    exit_code: int
    status: str  # "passed", "failed" (gates), "error" (no verdict: bad input, conversion, crash)
    message: str = ""
    seconds: float = 0.0
    shipped: dict = field(default_factory=dict)
    bundles: list = field(default_factory=list)
    cache: dict = field(default_factory=dict)  # "export"/"validation" -> {"hit": n, "miss": n, "off": n}
    log: str | None = None


@dataclass(frozen=True)
class FleetResult:
    outcomes: tuple[RecipeOutcome, ...]
    exit_code: int
    seconds: float
    summary_path: Path
    junit_path: Path

    def to_dict(self) -> dict:
        return {
            "exit_code": self.exit_code,
            "seconds": round(self.seconds, 3),
            "recipes": [asdict(o) for o in self.outcomes],
            "junit": str(self.junit_path),
        }


def worst_exit_code(codes: list[int]) -> int:
    """The most severe exit code (EXIT_SEVERITY); an unknown non-zero code counts as an unexpected error (1)."""
    ranked = [c if c in EXIT_SEVERITY else 1 for c in codes]
    return max(ranked, key=EXIT_SEVERITY.index, default=0)


def build_fleet(recipes: list[Path], options: FleetOptions) -> FleetResult:
    """Build every recipe (see the module doc); never raises for a recipe's failure, only for bad arguments."""
    from mobex.bundle.keys import ensure_dev_key
    from mobex.fleet.junit import combined_junit

    if options.executor not in EXECUTORS:
        raise UsageError(f"--executor {options.executor!r} is not one of {', '.join(EXECUTORS)}")
    start = time.perf_counter()
    key = options.key or ensure_dev_key()[0]  # made once here, not raced for by the workers
    options.out_dir.mkdir(parents=True, exist_ok=True)
    tasks = _tasks(recipes, options, key)
    outcomes = _run(tasks, options.workers)
    result = FleetResult(
        tuple(outcomes),
        worst_exit_code([o.exit_code for o in outcomes]),
        time.perf_counter() - start,
        options.out_dir / "fleet.json",
        options.out_dir / "junit.xml",
    )
    write_atomic(result.junit_path, combined_junit(outcomes))
    write_atomic(result.summary_path, (json.dumps(result.to_dict(), indent=2) + "\n").encode())
    return result


def _tasks(recipes: list[Path], options: FleetOptions, key: Path) -> list[RecipeTask]:
    """One task per recipe, each with its own output folder (named after its model; names must differ)."""
    names = [_name_of(r) for r in recipes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(
            f"several recipes build a model named {', '.join(dupes)}: their output folders would collide",
            "give each [model] name once per fleet",
        )
    in_process = options.workers <= 1
    return [
        RecipeTask(
            recipe=str(recipe),
            name=name,
            out_dir=str(options.out_dir / name),
            log=None if in_process else str(options.out_dir / "logs" / f"{name}.log"),
            key=str(key),
            jobs=options.jobs,
            executor=options.executor,
            ray_address=options.ray_address,
            cache=options.cache,
            source_date_epoch=options.source_date_epoch,
        )
        for recipe, name in zip(recipes, names, strict=True)
    ]


def _name_of(recipe: Path) -> str:
    """The recipe's model name, or (when it cannot be read: its build then reports why) its folder's name."""
    import tomllib

    try:
        name = tomllib.loads(recipe.read_text(encoding="utf-8"))["model"]["name"]
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
        name = f"{recipe.parent.name}-{recipe.stem}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)) or "recipe"


def _run(tasks: list[RecipeTask], workers: int) -> list[RecipeOutcome]:
    if workers <= 1:
        return [build_one(t) for t in tasks]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx) as pool:
        futures = [pool.submit(build_one, t) for t in tasks]
        out = []
        for task, future in zip(tasks, futures, strict=True):
            try:
                out.append(future.result())
            except Exception as exc:  # the worker process died (a crash in native code)
                message = f"build process died: {exc}"
                out.append(RecipeOutcome(task.recipe, task.name, task.out_dir, 1, "error", message))
        return out


def build_one(task: RecipeTask) -> RecipeOutcome:
    """Build one recipe (in a pool worker, printing into its log file) and summarise how it went."""
    from mobex.pipeline import BuildOptions, build
    from mobex.recipe import load_recipe

    if task.log is not None:
        _print_into(Path(task.log))
    start = time.perf_counter()
    code, status, message = 0, "passed", ""
    try:
        recipe = load_recipe(task.recipe)
        options = BuildOptions(
            out_dir=Path(task.out_dir),
            key=Path(task.key),
            jobs=task.jobs,
            source_date_epoch=task.source_date_epoch,
            cache=task.cache,
            executor=make_executor(task.executor, task.ray_address),
        )
        build(recipe, options)
    except GateFailed as exc:
        code, status, message = exc.exit_code, "failed", exc.message
    except MobexError as exc:
        code, status, message = exc.exit_code, "error", str(exc)
    except Exception as exc:  # a bug or a library crash: the other recipes still build
        code, status = 1, "error"
        message = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc)[-4:])
    return _outcome(task, code, status, message, time.perf_counter() - start)


def make_executor(name: str, ray_address: str | None):  # noqa: ANN201 - an Executor
    """The executor `--executor NAME` means (None: the pipeline's default, local processes)."""
    if name not in EXECUTORS:
        raise UsageError(f"--executor {name!r} is not one of {', '.join(EXECUTORS)}")
    if name == "ray":
        from mobex.fleet.ray_executor import RayExecutor

        return RayExecutor(ray_address)
    return None


def _print_into(log: Path) -> None:
    """Send this process's stdout and stderr (and its children's) into `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab", buffering=0) as fh:
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115


def _outcome(task: RecipeTask, code: int, status: str, message: str, seconds: float) -> RecipeOutcome:
    """What the recipe's report.json says (shipped, bundles, cache use), when its build wrote one."""
    report_path = Path(task.out_dir) / "report.json"
    shipped, bundles, cache = {}, [], {}
    if report_path.is_file() and code in (0, 4):
        report = json.loads(report_path.read_text())
        shipped, bundles = report.get("shipped", {}), [b["file"] for b in report.get("bundles", [])]
        for variant in report.get("variants", []):
            for stage, value in (variant.get("cache") or {}).items():
                if stage in ("export", "validation"):
                    counts = cache.setdefault(stage, {})
                    counts[value] = counts.get(value, 0) + 1
    seconds = round(seconds, 3)
    common = (task.recipe, task.name, task.out_dir, code, status, message, seconds)
    return RecipeOutcome(*common, shipped=shipped, bundles=bundles, cache=cache, log=task.log)
