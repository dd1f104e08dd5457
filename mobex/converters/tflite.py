"""PyTorch -> .tflite with litert-torch, with the recipe's input names in the TFLite signature.

Names and order (the contract the runner, manifest and apps rely on):
- Inputs: the model is wrapped so that litert-torch traces it with keyword arguments named after the
  recipe's inputs (`example_inputs` keys) and calls `model(*values)` in that order. The TFLite
  signature `serving_default` therefore takes `input_ids`, `attention_mask`, ... instead of `args_0`.
  Input names must be Python identifiers other than `self` (they become keyword arguments).
- Outputs: the model's return value is flattened in torch output order (`flatten_outputs`) and
  returned as a dict keyed by `output_names`, or `output_0 .. output_{N-1}` when none are given, so
  the signature's output keys are exactly those names, in torch order. The spec lists outputs in
  torch order under those names; `TfliteRunner` reads them back in the same order. Spec names are
  signature keys (what Android's `runSignature` maps use), not the internal tensor names
  (`serving_default_<name>_output`, which quantization may rename).
- dtypes: litert-torch stores 64-bit I/O as 32-bit (int64 ids become int32). The returned
  TensorSpecs describe what the .tflite takes; a note records each downcast.
"""

from __future__ import annotations

import contextlib
import keyword
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mobex.artifacts import ExportedVariant, path_size
from mobex.converters import op_location, tflite_lowering
from mobex.converters.tflite_metadata import TfliteMetadata, apply_model_contract
from mobex.errors import ConversionError, UsageError
from mobex.runtime.litert import SIGNATURE_KEY, load_tflite_io
from mobex.runtime.torch_model import flatten_outputs


def convert_tflite(
    model: Any,
    example_inputs: dict[str, Any],
    out_path: Path,
    *,
    output_names: list[str] | None = None,
    metadata: TfliteMetadata | None = None,
) -> ExportedVariant:
    """Convert `model` (put in eval mode) to a float32 .tflite at `out_path`, written atomically.

    `example_inputs` maps each input name to an example tensor, in call order (`model(*values)`).
    The I/O tensors are named after the inputs and outputs, and `metadata` (when given) is written as
    TFLite metadata (mobex.converters.tflite_metadata).
    Raises UsageError for bad arguments and ConversionError (naming the failing op when
    litert-torch does) when the model cannot be converted.
    """
    import litert_torch
    import torch

    names = list(example_inputs)
    if not names:
        raise UsageError("convert_tflite needs at least one example input", hint="declare [[inputs]] in the recipe")
    for name, value in example_inputs.items():
        if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name) or name == "self":
            raise UsageError(
                f"input name {name!r} cannot be a TFLite signature input name here",
                hint="use a Python identifier other than 'self' (letters, digits, '_'): litert-torch traces "
                "the model with keyword arguments named after the inputs",
            )
        if not isinstance(value, torch.Tensor):
            raise UsageError(f"example input {name!r} must be a torch.Tensor, got {type(value).__name__}")

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    start = time.perf_counter()

    # An eager pass first: a shape or dtype mistake reads better here than inside torch.export,
    # and it tells us how many outputs to name.
    try:
        with torch.no_grad():
            flat = flatten_outputs(model(*example_inputs.values()))
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported the same way
        raise ConversionError(
            f"the model fails on the example inputs {_describe(example_inputs)}: {type(e).__name__}: {e}",
            hint="check the shapes, dtypes and call order of [[inputs]] in the recipe",
        ) from e
    if not flat:
        raise ConversionError("the model returned no tensors, so there is nothing to export")
    out_names = _output_names(output_names, len(flat))

    wrapper = _named_io(model, names, out_names).eval()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with _quiet_litert(), tflite_lowering.recurrent_modules_as_custom_ops(model):  # installs every fix
            edge = litert_torch.signature(SIGNATURE_KEY, wrapper, sample_kwargs=dict(example_inputs)).convert()
            edge.export(str(tmp))
    except Exception as e:  # noqa: BLE001 - litert-torch raises anything from AssertionError to jax errors
        tmp.unlink(missing_ok=True)
        message, op = _summarize_failure(e)
        located = op_location.describe(model, tuple(example_inputs.values()), str(e))  # the module path
        if located:
            message = f"{message} [{located[0]}]"
        raise ConversionError(message, hint=located[1] if located else (_OP_HINT if op else _HINT)) from e
    try:
        tmp.write_bytes(apply_model_contract(tmp.read_bytes(), metadata, SIGNATURE_KEY))  # names, metadata
        io = load_tflite_io(tmp)
        if [s.name for s in io.inputs] != names or [s.name for s in io.outputs] != out_names:
            raise ConversionError(
                f"litert-torch wrote signature inputs {[s.name for s in io.inputs]} and outputs "
                f"{[s.name for s in io.outputs]}, expected {names} and {out_names}"
            )
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    notes = [f"litert-torch {litert_torch.__version__}, signature {io.signature!r}"]
    for spec, value in zip(io.inputs, example_inputs.values(), strict=True):
        torch_dtype = str(value.dtype).removeprefix("torch.")
        if torch_dtype != spec.dtype:
            notes.append(f"input {spec.name!r} is {spec.dtype} in TFLite ({torch_dtype} in torch)")
    for spec, value in zip(io.outputs, flat, strict=True):
        torch_dtype = str(value.dtype).removeprefix("torch.")
        if torch_dtype != spec.dtype:
            notes.append(f"output {spec.name!r} is {spec.dtype} in TFLite ({torch_dtype} in torch)")
    return ExportedVariant(
        target="tflite",
        platform="android",
        quantization="fp32",
        path=out_path,
        inputs=io.inputs,
        outputs=io.outputs,
        size_bytes=path_size(out_path),
        seconds=seconds,
        notes=notes,
    )


def _output_names(given: list[str] | None, count: int) -> list[str]:
    if given is None:
        return [f"output_{i}" for i in range(count)]
    given = list(given)
    if len(given) != count:
        raise UsageError(
            f"{len(given)} output names {given} given, but the model returns {count} tensors",
            hint="give one name per returned tensor, in the order the model returns them",
        )
    if len(set(given)) != len(given) or not all(isinstance(n, str) and n for n in given):
        raise UsageError(f"output names must be unique, non-empty strings: {given}")
    return given


def _make_named_io() -> type:
    import torch

    class NamedIO(torch.nn.Module):
        """Keyword inputs named after the recipe, dict outputs named in torch order (see module doc)."""

        def __init__(self, model: torch.nn.Module, input_names: list[str], output_names: list[str]) -> None:
            super().__init__()
            self.model = model
            self.input_names = input_names
            self.output_names = output_names

        def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
            flat = flatten_outputs(self.model(*(inputs[n] for n in self.input_names)))
            return dict(zip(self.output_names, flat, strict=True))

    return NamedIO


def _named_io(model: Any, input_names: list[str], output_names: list[str]) -> Any:
    """Build the wrapper lazily so importing this module does not import torch."""
    return _make_named_io()(model, input_names, output_names)


@contextlib.contextmanager
def _quiet_litert() -> Iterator[None]:
    """Silence litert-torch's progress printing for this call only (it is read from the environment)."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    previous = os.environ.get(key)
    if previous is None:
        os.environ[key] = "n"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(key, None)


_OP_HINT = (
    "replace the op with one litert-torch supports, or move it out of the exported module "
    "(pre/post-processing in the app)"
)
_HINT = (
    "reproduce with torch.export.export(model, args, strict=False); data-dependent shapes and "
    "Python control flow on tensor values are the usual causes"
)


def _summarize_failure(e: BaseException) -> tuple[str, str | None]:
    """One paragraph: which op failed (when litert-torch or torch.export names it) and the first error lines."""
    text = str(e)
    op = None
    for pattern in (r"Lowering not found: (\S+)", r"target=torch\.ops\.([\w.]+)", r"target=([\w.]+)"):
        match = re.search(pattern, text)
        if match:
            op = match.group(1)
            break
    first = " ".join(line.strip() for line in text.strip().splitlines()[:3] if line.strip())
    if len(first) > 400:
        first = first[:400] + "..."
    where = f" at op {op}" if op else ""
    return f"litert-torch could not convert the model{where}: {type(e).__name__}: {first or '(no message)'}", op


def _describe(example_inputs: dict[str, Any]) -> str:
    return ", ".join(f"{k}{list(v.shape)}:{str(v.dtype).removeprefix('torch.')}" for k, v in example_inputs.items())
