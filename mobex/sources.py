"""Model loading: the recipe's `source` becomes an `nn.Module` in eval mode.

Supported sources:
- `module:function` — a factory in the recipe's folder (put on the import path) returning an nn.Module;
  optional `weights` from safetensors or a state_dict file loaded with `torch.load(weights_only=True)`.
- `*.pt` — a TorchScript archive (`torch.jit.load`: TorchScript code, not pickled Python objects).
- `*.pt2` — an ExportedProgram, loaded through `mobex.safe_pt2` (checked archive, no pickle needing code,
  no compiled libraries, no eval'd shape expressions).

Never unpickle: weights go through safetensors or `weights_only=True`.

A factory is imported and called with torch's, numpy's and Python's global RNGs seeded (FACTORY_SEED), and
the caller's RNG states restored afterwards. The model is loaded in several processes (the reference run
here, each export in its own worker), each with its RNG in a different state by then: a factory that
leaves some weights at their random init (transformers' `position_embeddings`, a weight-norm conv's
`original0/1`) would otherwise give the reference and every export different weights, and parity would
compare different models.

A factory can still differ between processes in ways seeding does not reach (the time, `os.urandom`, a
file it reads): `weights_fingerprint` summarises every parameter and buffer where the reference run loads
the model, each export worker checks its own copy against it (mobex.export), and a difference beyond
float rounding fails the export naming the first tensor that differs, instead of validating a model that
is not the one exported.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from mobex.errors import UsageError

if TYPE_CHECKING:
    import torch

    from mobex.recipe import Recipe

FACTORY_SEED = 0


def load_model(recipe: Recipe) -> torch.nn.Module:
    """The recipe's model, weights applied, in eval mode."""
    weights = recipe.resolve(recipe.model.weights) if recipe.model.weights is not None else None
    return load_source(recipe.base_dir, recipe.model.source, weights)


Fingerprint = tuple[tuple[str, tuple], ...]
FINGERPRINT_RTOL = 1e-5  # float tensors: equal up to this, relative to the tensor's norm (see weights_fingerprint)


def weights_fingerprint(model: torch.nn.Module) -> Fingerprint:
    """(name, summary) of every parameter and buffer, in state_dict order.

    A float tensor's summary is its shape and three float64 sums (of the values, of the values times a
    fixed cosine sequence, so that moved values count, and of their squares), compared with a relative
    tolerance: a factory that computes weights (BatchNorm statistics estimated on random batches, say)
    gets other last bits in a process with another thread count, and that is the same model. Other
    random weights differ in every sum. Other tensors (int buffers) are compared exactly, by sha256."""
    import hashlib

    import numpy as np
    import torch

    out = []
    for name, tensor in model.state_dict(keep_vars=False).items():
        if not isinstance(tensor, torch.Tensor):
            continue
        t = tensor.detach().cpu().contiguous()
        if t.is_floating_point():
            x = t.reshape(-1).double().numpy()
            wave = np.cos(np.arange(x.size, dtype=np.float64))
            summary: tuple = ("float", tuple(t.shape), float(x.sum()), float(x @ wave), float(x @ x))
        else:
            h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            summary = ("exact", h.hexdigest()[:32])
        out.append((name, summary))
    return tuple(out)


def _same_tensor(a: tuple, b: tuple) -> bool:
    """Two summaries of one tensor agree: exactly, or (float) within FINGERPRINT_RTOL of the tensor's norm.

    Values off by a relative e each move a sum by at most e * norm * sqrt(size) (Cauchy-Schwarz) and the
    sum of squares by about 2 * e * norm**2."""
    if a[0] != "float" or b[0] != "float" or a[1] != b[1]:
        return a == b
    size = 1
    for dim in a[1]:
        size *= dim
    norm = max(a[4], b[4], 0.0) ** 0.5
    tol = FINGERPRINT_RTOL * norm * max(size, 1) ** 0.5
    sums_agree = abs(a[2] - b[2]) <= tol and abs(a[3] - b[3]) <= tol
    return sums_agree and abs(a[4] - b[4]) <= 2 * FINGERPRINT_RTOL * norm**2


def fingerprint_mismatch(expected: Fingerprint, model: torch.nn.Module) -> str | None:
    """Why `model` is not the model `expected` was taken of (None when it is)."""
    got = weights_fingerprint(model)
    mine, theirs = dict(got), dict(expected)
    if list(mine) != list(theirs):
        missing, extra = sorted(set(theirs) - set(mine)), sorted(set(mine) - set(theirs))
        return f"its tensors differ: missing {missing[:3]}, extra {extra[:3]}"
    changed = [n for n in theirs if not _same_tensor(mine[n], theirs[n])]
    if not changed:
        return None
    return f"{len(changed)} of {len(theirs)} tensors have different values, first {changed[0]!r}"


def load_source(base_dir: Path, source: str, weights: Path | None = None) -> torch.nn.Module:
    """A model source (factory, .pt or .pt2; paths relative to `base_dir`), weights applied, in eval mode."""
    if source.endswith(".pt"):
        model = _load_torchscript(base_dir / source)
    elif source.endswith(".pt2"):
        model = _load_exported_program(base_dir / source)
    else:
        model = _load_factory(base_dir, source)
    if weights is not None:
        load_weights(model, weights)
    return model.eval()


def _load_factory(base_dir: Path, source: str) -> torch.nn.Module:
    """Import the factory's module and call it, both with seeded RNGs: the same random init in every process."""
    with _seeded_rngs(FACTORY_SEED):
        return _call_factory(base_dir, source)


@contextmanager
def _seeded_rngs(seed: int) -> Iterator[None]:
    """Seed the global RNGs a factory may draw its random init from (torch CPU, numpy, Python's `random`)
    for the block, then restore the caller's states: loading a model does not shift the caller's randomness."""
    import random

    import numpy as np
    import torch

    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


def _call_factory(base_dir: Path, source: str) -> torch.nn.Module:
    import torch

    module_name, _, function_name = source.partition(":")
    _import_from_folder_first(base_dir, module_name)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's code: report whatever it raised
        raise UsageError(
            f"[model].source: cannot import module {module_name!r} from {base_dir}: {type(exc).__name__}: {exc}",
            "the module must be a .py file (or package) in the recipe's folder or an installed module",
        ) from exc
    factory = getattr(module, function_name, None)
    if factory is None or not callable(factory):
        raise UsageError(f"[model].source: {module_name!r} has no callable {function_name!r}")
    try:
        model = factory()
    except Exception as exc:
        raise UsageError(f"[model].source: {source}() raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"[model].source: {source}() returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _import_from_folder_first(base_dir: Path, module_name: str) -> None:
    """Make `import module_name` find the recipe's own file, even if another recipe's same-named
    module (every sample has a `model.py`) was imported earlier in this process."""
    folder = str(base_dir)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    top = module_name.split(".")[0]
    cached = sys.modules.get(top)
    cached_file = getattr(cached, "__file__", None) or ""
    if cached is not None and not Path(cached_file).resolve().is_relative_to(base_dir.resolve()):
        for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
            del sys.modules[name]
    importlib.invalidate_caches()


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a state_dict from safetensors or a torch file (weights_only=True), strictly."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as exc:
            raise UsageError(f"[model].weights: {path} is not a readable safetensors file: {exc}") from exc
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise UsageError(
                f"[model].weights: {path} cannot be loaded safely (weights_only=True): {type(exc).__name__}: {exc}",
                "save a plain state_dict (torch.save(model.state_dict(), ...)) or convert it to safetensors",
            ) from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise UsageError(f"[model].weights: {path} holds a {type(state).__name__}, not a state_dict")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing keys: {', '.join(result.missing_keys[:5])}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys: {', '.join(result.unexpected_keys[:5])}")
        raise UsageError(
            f"[model].weights: {path} does not match the model ({'; '.join(parts)})",
            "check that the factory builds the same architecture the weights were saved from",
        )


def _load_torchscript(path: Path) -> torch.nn.Module:
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UsageError(f"[model].source: {path} is not a TorchScript archive: {exc}") from exc


def _load_exported_program(path: Path) -> torch.nn.Module:
    from mobex.safe_pt2 import UnsafeExportedProgram

    try:
        return exported_program_module(path)
    except UnsafeExportedProgram as exc:
        raise UsageError(
            f"[model].source: {path} is refused: {exc}",
            "save the model with a plain torch.export.save(torch.export.export(model, inputs), path) "
            "(tensors only), or use a 'module:function' factory with safetensors weights",
        ) from None
    except Exception as exc:
        raise UsageError(f"[model].source: {path} is not an ExportedProgram (.pt2): {exc}") from exc


def exported_program_module(path: Path) -> torch.nn.Module:
    """An ExportedProgram file as a module that both converters accept.

    `ExportedProgram.module()` installs instance overrides that make `.train()`/`.eval()` raise;
    the converters call `.eval()`. The graph was captured with its mode baked in (BatchNorm running
    statistics, no dropout when exported in eval mode), so `.eval()` has nothing left to change and
    the overrides are dropped.
    """
    from mobex.safe_pt2 import load_exported_program

    module = load_exported_program(path).module()
    for name in ("train", "eval"):
        module.__dict__.pop(name, None)
    return module
