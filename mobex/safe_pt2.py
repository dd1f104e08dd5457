"""Load an ExportedProgram (`.pt2`) without running code from the file.

`torch.export.load` (torch 2.13, torch/export/pt2_archive/_package.py) can execute what a `.pt2`
carries in four ways:
- it unpickles the sample inputs with `torch.load(weights_only=False)` when `weights_only=True`
  fails (torch/_export/serde/serialize.py `deserialize_torch_artifact`), and pickled weights and
  tensor constants (`use_pickle`) with `weights_only=False` directly;
- it unpickles "opaque object" constants with plain `pickle.loads`, and torchbind objects with
  TorchScript's unpickler;
- it loads AOTInductor members (`data/aotinductor/`) as a compiled shared library;
- it parses symbolic shape expressions (`expr_str` in models/*.json) with `sympy.sympify`, which
  evaluates the string as Python.

So before torch sees the file, mobex reads the archive itself: only the members a plain export
writes are allowed (graph JSON, tensor payloads and their configs, sample inputs, version files),
every JSON member is size- and depth-bounded, and every `expr_str` must be arithmetic over shape
symbols and sympy's integer functions. Then `torch.export.load` runs with `torch.load` forced to
`weights_only=True` and the two other unpicklers disabled, so any pickle that needs code to load is
refused instead of run. A refused file raises `UnsafeExportedProgram` (a ValueError).
"""

from __future__ import annotations

import re
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from mobex.bounded import loads_json, name_list

MAX_MEMBERS = 100_000
MAX_GRAPH_JSON_BYTES = 512 << 20
MAX_CONFIG_JSON_BYTES = 64 << 20
MAX_GRAPH_DEPTH = 256  # the graph schema nests a few dozen levels; json itself overflows near 1000

# Members of a plain torch.export.save archive, relative to its top folder (torch 2.13).
_ALLOWED_MEMBERS = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[^/]+\.json"
    r"|data/weights/(weight_\d+|[^/]+_weights_config\.json)"
    r"|data/constants/(tensor_\d+|[^/]+_constants_config\.json)"
    r"|data/sample_inputs/[^/]+\.pt"
    r"|extra/[^/]+)"
)
# Shape expressions torch writes (`str(sympy expr)`): symbols like s0 / u3, integers, operators and
# these functions. No attribute access, quotes, brackets or other names reach sympify.
_SYMPY_FUNCTIONS = frozenset(
    {
        "FloorDiv", "ModularIndexing", "Where", "PythonMod", "Mod", "CleanDiv", "CeilToInt", "FloorToInt",
        "CeilDiv", "LShift", "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator", "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal",
        "ToFloat", "Identity", "Max", "Min", "Abs", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "And", "Or", "Not",
        "floor", "ceiling", "sqrt", "True", "False", "oo", "Integer", "Rational",
    }
)  # fmt: skip
_EXPR_CHARS = re.compile(r"[A-Za-z0-9_ +\-*/%()<>=!,.&|~^]*")
_EXPR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SYMBOL = re.compile(r"[a-z]{1,4}\d{1,9}")
_NUMBER_WITH_POINT = re.compile(r"\d+\.\d+(?:e[+-]?\d+)?")
# torch 2.13 writes a plain symbol as its repr: Symbol('s77', positive=True, integer=True)
_SYMBOL_REPR = re.compile(
    r"Symbol\('([a-z]{1,4}\d{1,9})'(?:, ?(?:positive|negative|nonnegative|nonpositive|integer|real|finite)"
    r"=(?:True|False))*\)"
)
_LOCK = threading.Lock()


class UnsafeExportedProgram(ValueError):
    """A `.pt2` that would need to run code (pickles, compiled libraries, eval'd expressions) to load."""


def load_exported_program(path: Path) -> Any:
    """`torch.export.load(path)`, after checking the archive, with every code-running unpickler disabled."""
    import torch

    check_archive(Path(path))
    with _no_code_unpickling():
        return torch.export.load(str(path))


def check_archive(path: Path) -> None:
    """Refuse members a plain export does not write, and unbounded or unsafe JSON members."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise UnsafeExportedProgram(f"not a zip archive: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise UnsafeExportedProgram(f"{len(infos)} members, more than the {MAX_MEMBERS} allowed")
        unexpected = [i.filename for i in infos if not i.is_dir() and not _allowed(i.filename)]
        if unexpected:
            raise UnsafeExportedProgram(
                f"members a plain torch.export.save does not write (pickled objects, compiled code): "
                f"{name_list(unexpected)}"
            )
        for info in infos:
            rel = _relative(info.filename)
            if rel.endswith(".json"):
                graph = rel.startswith("models/")
                limit = MAX_GRAPH_JSON_BYTES if graph else MAX_CONFIG_JSON_BYTES
                if info.file_size > limit:
                    raise UnsafeExportedProgram(f"{info.filename} is {info.file_size} bytes, over {limit}")
                try:
                    doc = loads_json(zf.read(info), info.filename, max_bytes=limit, max_depth=MAX_GRAPH_DEPTH)
                except ValueError as exc:  # too large, too deep, not JSON
                    raise UnsafeExportedProgram(str(exc)) from None
                if graph:
                    for expr in _expr_strings(doc):
                        check_shape_expression(expr)


def check_shape_expression(expr: str) -> None:
    """An `expr_str` must be arithmetic over shape symbols and known sympy functions (sympify evals it)."""
    plain = _SYMBOL_REPR.sub(r"\1", expr) if len(expr) <= 10_000 else expr
    if len(expr) > 10_000 or not _EXPR_CHARS.fullmatch(plain):
        raise UnsafeExportedProgram(f"shape expression {expr[:80]!r} has characters a shape never needs")
    without_numbers = _NUMBER_WITH_POINT.sub("0", plain)
    if "." in without_numbers or "__" in without_numbers:
        raise UnsafeExportedProgram(f"shape expression {expr[:80]!r} uses attribute access")
    for name in _EXPR_NAME.findall(without_numbers):
        if name not in _SYMPY_FUNCTIONS and not _SYMBOL.fullmatch(name) and not name.isdigit():
            raise UnsafeExportedProgram(f"shape expression {expr[:80]!r} names {name!r}, which is not a shape symbol")


def _relative(name: str) -> str:
    """A member's path below the archive's top folder (`model/…` -> `…`)."""
    parts = PurePosixPath(name).parts
    return "/".join(parts[1:]) if len(parts) > 1 else name


def _allowed(name: str) -> bool:
    if name.startswith("/") or "\\" in name or ".." in PurePosixPath(name).parts:
        return False
    return _ALLOWED_MEMBERS.fullmatch(_relative(name)) is not None


def _expr_strings(doc: Any) -> Iterator[str]:
    """Every value under an `expr_str` key, walked without recursion (the depth is bounded anyway)."""
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "expr_str" and isinstance(value, str):
                    yield value
                else:
                    stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)


def _refuse_unpickling(*_args: object, **_kwargs: object) -> None:
    raise UnsafeExportedProgram("the archive holds pickled Python objects, which mobex refuses to unpickle")


@contextmanager
def _no_code_unpickling() -> Iterator[None]:
    """For the duration: every torch.load is weights_only=True; pickle.loads and the torchbind unpickler refuse.

    Process-wide while it lasts (torch looks these up at call time), so calls are serialized by a lock.
    """
    import torch
    import torch.export.pt2_archive._package as package

    real_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return real_load(*args, **kwargs)
        except Exception as exc:  # torch's UnpicklingError explains weights_only at length: keep the gist
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UnsafeExportedProgram(
                f"a pickled member needs code to load, which mobex refuses (weights_only=True): {first[:300]}"
            ) from None

    class _NoPickle:
        loads = staticmethod(_refuse_unpickling)
        load = staticmethod(_refuse_unpickling)

    with _LOCK:
        saved = (torch.load, package.pickle, torch._C._pickle_load_obj)
        torch.load = weights_only_load
        package.pickle = _NoPickle  # type: ignore[assignment]
        torch._C._pickle_load_obj = _refuse_unpickling
        try:
            yield
        finally:
            torch.load, package.pickle, torch._C._pickle_load_obj = saved
