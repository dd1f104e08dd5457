"""The coverage zoo: architectures mobex must build on both targets, each defined once (issue 13).

Each `ZooEntry` has a factory (deterministic: it seeds torch itself), fixed input specs, data (real data
that scikit-learn ships where it fits, synthetic signals only for audio and recurrent state, marked as
such), a task, and what the validation work of issue 13 parts 4-6 would add for it (`needs`).
`prepare(entry, folder)` writes a complete `mobex build` folder: `zoo_model.py` (imports the factory
from here), `weights.safetensors` for the entries trained on real data, `val.npz` and `recipe.toml`.

Used by scripts/coverage.py (the coverage table), scripts/bench_build.py (build times) and
tests/coverage/test_zoo_build.py.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SCRIPTS = Path(__file__).resolve().parents[1]
ROOT = SCRIPTS.parent
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))

COVERAGE_VARIANTS = {"android": ["fp32", "fp16", "dynamic-int8"], "ios": ["fp32", "fp16"]}
DEFAULT_VARIANTS = {"android": ["fp32", "dynamic-int8"], "ios": ["fp16"]}  # mobex/recipe.py's defaults


@dataclass(frozen=True)
class Input:
    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class ZooEntry:
    """One architecture: how to build it, what it takes, what data it is judged on."""

    name: str
    family: str  # recurrent | activation | detection | dense | audio | text | classic | transformers
    factory: Callable[[], Any]
    inputs: tuple[Input, ...]
    data: Callable[[str, int], dict[str, np.ndarray]]  # (split, n) -> arrays (+ "labels")
    task: str = "other"
    outputs: tuple[str, ...] = ()
    train_epochs: int = 0  # > 0: trained on data("train", train_samples) before the build
    train_samples: int = 1200
    samples: int = 16  # validation samples (batch = inputs[0].shape[0])
    data_note: str = ""  # where the data comes from (real / SYNTHETIC)
    covers: tuple[str, ...] = ()
    needs: str = ""  # what issue 13 parts 4-6 would add for this model
    fast: bool = False  # in the default (not slow) test run
    extra: dict = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    if entry.name in ZOO:
        raise ValueError(f"zoo entry {entry.name!r} defined twice")
    ZOO[entry.name] = entry
    return entry


def params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def build_model(name: str) -> Any:
    """The entry's model (weights applied later by mobex from weights.safetensors when trained)."""
    return ZOO[name].factory()


# --- training on real data --------------------------------------------------------------------------


def train(entry: ZooEntry, model: Any) -> dict[str, float]:
    """A few epochs of Adam on the entry's training split; classification (CE) or regression (MSE)."""
    import torch

    data = entry.data("train", entry.train_samples)
    labels = torch.from_numpy(data.pop("labels"))
    xs = [torch.from_numpy(data[i.name]) for i in entry.inputs]
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = torch.nn.CrossEntropyLoss() if entry.task == "classification" else torch.nn.MSELoss()
    model.train()
    for _ in range(entry.train_epochs):
        for idx in torch.randperm(len(labels), generator=gen).split(32):
            opt.zero_grad()
            loss = loss_fn(model(*(x[idx] for x in xs)), labels[idx])
            loss.backward()
            opt.step()
    model.eval()
    return {"train_loss": float(loss.detach())}


# --- a build folder ---------------------------------------------------------------------------------


def prepare(entry: ZooEntry, folder: Path, variants: dict[str, list[str]] | None = None,
            quick_latency: bool = True) -> Path:  # fmt: skip
    """Write model, weights, data and recipe for `mobex build` into `folder`; returns the recipe path."""
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zoo_model.py").write_text(
        f"import sys\nsys.path.insert(0, {str(SCRIPTS)!r})\nfrom coverage_zoo import build_model\n\n\n"
        f"def build():\n    return build_model({entry.name!r})\n"
    )
    weights = None
    if entry.train_epochs:
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = entry.factory()
        train(entry, model)
        weights = folder / "weights.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    batch = entry.inputs[0].shape[0]
    arrays = entry.data("val", entry.samples * batch)
    if entry.task not in ("classification", "regression"):
        arrays.pop("labels", None)
    np.savez(folder / "val.npz", **arrays)
    (folder / "recipe.toml").write_text(recipe_text(entry, weights is not None, variants or COVERAGE_VARIANTS,
                                                    quick_latency))  # fmt: skip
    return folder / "recipe.toml"


def recipe_text(entry: ZooEntry, weights: bool, variants: dict[str, list[str]], quick_latency: bool) -> str:
    def strings(items: list[str] | tuple[str, ...]) -> str:
        return "[" + ", ".join(f'"{v}"' for v in items) + "]"

    lines = [
        "[model]",
        f'name = "zoo-{entry.name.replace("_", "-")}"',
        'version = "0.1.0"',
        'source = "zoo_model:build"',
        f'task = "{entry.task}"',
    ]
    if weights:
        lines.append('weights = "weights.safetensors"')
    for spec in entry.inputs:
        lines += ["", "[[inputs]]", f'name = "{spec.name}"', f"shape = {list(spec.shape)}", f'dtype = "{spec.dtype}"']
    for name in entry.outputs:
        lines += ["", "[[outputs]]", f'name = "{name}"']
    lines += ["", "[data]", 'validation = "val.npz"']
    for platform in ("android", "ios"):
        if variants.get(platform):
            lines += ["", f"[{platform}]", f"variants = {strings(variants[platform])}"]
    if quick_latency:  # the sweep measures parity; latency at one thread, few runs, keeps 50 builds short
        lines += ["", "[latency]", "threads = [1]", "warmup = 1", "runs = 3"]
    return "\n".join(lines) + "\n"


def coverage_script() -> Any:
    """scripts/coverage.py as a module (loaded by path: an installed `coverage` package has the same name)."""
    import importlib.util

    if "mobex_coverage_script" in sys.modules:
        return sys.modules["mobex_coverage_script"]
    spec = importlib.util.spec_from_file_location("mobex_coverage_script", SCRIPTS / "coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_families() -> None:
    from coverage_zoo import activations, audio, classic, dense, detection, hf, recurrent, text  # noqa: F401


_load_families()
