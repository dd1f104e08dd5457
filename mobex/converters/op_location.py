"""Where an unconvertible op sits in the user's model, and what to do about it.

Converters name the op they fail on (coremltools: "Unsupported fx node linalg_inv, kind linalg_inv",
"convert function for op 'x' not implemented"; litert-torch: "Lowering not found: aten.x"), but not
where it came from. torch.export records, for every node, the stack of modules that called it
(`nn_module_stack`); the innermost entry is the path a user reads in `model.named_modules()`, e.g.
`encoder.layers.2.attn`. The converters add that path and a workaround to their ConversionError.
"""

from __future__ import annotations

import re
from typing import Any

_OP_PATTERNS = (
    r"Unsupported fx node \S+, kind ([\w.]+)",
    r"convert function for op '([\w.]+)' not implemented",
    r"Lowering not found: (?:aten\.)?([\w.]+)",
    r"lowering for Torch `([\w.]+)` op is not supported",
    r"target=torch\.ops\.aten\.([\w.]+)",
)

# op -> what to do instead (ops with no fix in mobex; the generic advice covers the rest).
WORKAROUNDS: dict[str, str] = {
    "linalg_inv": "invert outside the model (in the app), or use a closed form for small fixed-size matrices",
    "stft": "compute the STFT as a Conv1d with fixed cosine/sine kernels (see scripts/coverage_zoo/audio.py)",
    "fft_rfft": "replace the FFT by a matmul with a fixed DFT matrix, or a Conv1d with DFT kernels",
    "nonzero": "avoid data-dependent shapes: use a mask (torch.where) and a fixed-size output instead",
    "unique": "avoid data-dependent shapes: return fixed-size scores and post-process in the app",
}
GENERIC_WORKAROUND = (
    "rewrite that module with supported ops, or move it out of the exported model (pre/post-processing in the app)"
)


def failing_op(message: str) -> str | None:
    """The op a converter's error message names, without overload suffix ('.default', '.Tensor')."""
    for pattern in _OP_PATTERNS:
        match = re.search(pattern, message)
        if match:
            return match.group(1).split(".")[0].lower()
    return None


def module_paths(model: Any, args: tuple, op: str) -> list[str]:
    """Module paths (as in `named_modules()`) whose forward calls `op`, found through torch.export.

    Empty when the model does not export or no node matches (the op may come from a decomposition).
    """
    import torch

    try:
        program = torch.export.export(model, args, strict=False)
    except Exception:  # noqa: BLE001 - locating is best effort; the conversion error stands on its own
        return []
    paths: list[str] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        if not _same_op(getattr(node.target, "__name__", str(node.target)).split(".")[0].lower(), op):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        path = list(stack.values())[-1][0] if stack else ""
        path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", str(path))
        label = path or "<the model's own forward>"
        if label not in paths:
            paths.append(label)
    return paths


def _same_op(graph_name: str, failed: str) -> bool:
    """The exported graph holds the op before decomposition: linalg_svd there, _linalg_svd in the error;
    linalg_inv there, linalg_inv_ex after decomposition."""
    a, b = graph_name.strip("_"), failed.strip("_")
    return a == b or a.startswith(b + "_") or b.startswith(a + "_")


def describe(model: Any, args: tuple, message: str) -> tuple[str, str] | None:
    """(" at op X in module a.b.c", workaround) for a converter error message, or None if no op is named."""
    op = failing_op(message)
    if op is None:
        return None
    paths = module_paths(model, args, op)
    where = f" in module {', '.join(paths[:3])}" if paths else ""
    return f"op {op}{where}", WORKAROUNDS.get(op, GENERIC_WORKAROUND)
