"""Which runtime runs which model format: a small registry keyed by the manifest's `model.format`.

A runner is built from the model file and a thread count and has `run(feed) -> list[np.ndarray]`
(outputs in the manifest's output order), the contract every mobex runtime follows. Runtimes are
named as "module:Class" and imported only when a bundle of that format is served, so a missing
optional runtime (ExecuTorch) is a clear error for that bundle alone, not an import error at start.
Adding a runtime is one `register_runner` line.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from mobex.errors import UsageError


class Runner(Protocol):
    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]: ...


RunnerFactory = Callable[[Path, int], Runner]

_RUNNERS: dict[str, str | RunnerFactory] = {}

# Core ML models run only on Apple platforms; mobex's MIL interpreter validates them, it is no server.
_UNSERVABLE = {
    "mlpackage": "Core ML models run only on Apple platforms: serve the android bundle of this model instead"
}


def register_runner(model_format: str, factory: str | RunnerFactory) -> None:
    """Serve `model_format` with `factory(path, threads)`, or with the class named "module:Class"."""
    _RUNNERS[model_format] = factory


def registered_formats() -> list[str]:
    return sorted(_RUNNERS)


def resolve_factory(model_format: str) -> RunnerFactory:
    """The factory for a format; UsageError naming the format and what to do when there is none."""
    if model_format in _UNSERVABLE:
        raise UsageError(f"cannot serve a {model_format!r} model", hint=_UNSERVABLE[model_format])
    entry = _RUNNERS.get(model_format)
    if entry is None:
        raise UsageError(
            f"no runtime serves model format {model_format!r}",
            hint=f"mobex serves {', '.join(registered_formats())} bundles",
        )
    if not isinstance(entry, str):
        return entry
    module_name, _, class_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"model format {model_format!r} needs {module_name}, which this mobex does not have ({exc})",
            hint="install the mobex version (or extra) that ships this runtime, or serve another platform's bundle",
        ) from None
    factory = getattr(module, class_name, None)
    if factory is None:
        raise UsageError(f"{module_name} has no runner class {class_name} for model format {model_format!r}")
    return factory


def make_runner(model_format: str, path: Path, threads: int = 1) -> Runner:
    """A fresh runner (one interpreter) for the model file at `path`."""
    return resolve_factory(model_format)(Path(path), threads)


register_runner("tflite", "mobex.runtime.litert:TfliteRunner")
register_runner("pte", "mobex.runtime.executorch:ExecutorchRunner")
