"""Tensor names inside a .tflite file: the recipe's input and output names, not the converter's.

litert-torch names a model's I/O tensors `serving_default_<name>` / `serving_default_<name>_output`
and its inner tensors after the module path of mobex's tracing wrapper
(`mobex.converters.tflite._make_named_io.<locals>.NamedIO/model.Net_model/...`). Tools that read
tensor names (Netron, the Android Task Library, `Interpreter.getInputTensor(i).name()`) should see the
recipe's names: this module renames the main signature's I/O tensors after their signature keys and
drops the wrapper's prefix from every other name. The signature keys themselves are untouched.
"""

from __future__ import annotations

from typing import Any

WRAPPER_PREFIX = "mobex.converters.tflite._make_named_io.<locals>.NamedIO/"


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")


def name_io_tensors(model: Any, signature_key: str | None = None) -> dict[str, str]:
    """Rename, in a `ModelT` (ai_edge_litert's object API), each signature I/O tensor to its signature key
    and strip the tracing wrapper's prefix elsewhere. Returns {old name: new name} of the renamed tensors."""
    renamed: dict[str, str] = {}
    signatures = list(model.signatureDefs or [])
    chosen = [s for s in signatures if signature_key is None or _text(s.signatureKey) == signature_key][:1]
    io_names: dict[tuple[int, int], str] = {}
    for sig in chosen:
        for entry in list(sig.inputs or []) + list(sig.outputs or []):
            io_names[(sig.subgraphIndex, entry.tensorIndex)] = _text(entry.name)
    for g, graph in enumerate(model.subgraphs or []):
        for t, tensor in enumerate(graph.tensors or []):
            old = _text(tensor.name)
            new = io_names.get((g, t), old.replace(WRAPPER_PREFIX, ""))
            if new != old:
                tensor.name = new
                renamed[old] = new
    return renamed


def io_tensor_names(model_bytes: bytes) -> tuple[list[str], list[str]]:
    """The names of subgraph 0's input and output tensors, in order (to check what `name_io_tensors` did)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAs(model_bytes, 0).Subgraphs(0)
    return (
        [graph.Tensors(int(i)).Name().decode() for i in graph.InputsAsNumpy()],
        [graph.Tensors(int(i)).Name().decode() for i in graph.OutputsAsNumpy()],
    )
