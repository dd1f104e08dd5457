"""The original torch model as a runner: the reference every exported variant is compared against.

Outputs come in *torch output order*: the tensors of the model's return value, flattened with torch's
pytree (tuples/lists in order, dicts in insertion order, Hugging Face `ModelOutput` fields in declaration
order, non-tensor leaves dropped). Every other runner returns its outputs in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mobex.runtime.feeds import missing_input


def flatten_outputs(out: Any) -> list:
    """The tensors of a torch model's return value in torch output order (see module docstring)."""
    import torch

    if isinstance(out, torch.Tensor):  # the common case, without pytree's cost inside timed runs
        return [out]
    from torch.utils import _pytree as pytree

    leaves, _ = pytree.tree_flatten(out)
    return [leaf for leaf in leaves if isinstance(leaf, torch.Tensor)]


class TorchRunner:
    """Runs the original torch model: the reference every exported variant is compared against.

    `num_threads` is applied with `torch.set_num_threads` (process-wide: torch has no per-model
    setting) before each call, only when it differs, so alternating runners stay fair.
    float64 feeds are cast to float32 (npz files often hold float64); integer feeds are passed as is.

    torch's fused attention fast path (`nn.TransformerEncoder` / `nn.MultiheadAttention` in eval without
    grad) is off during the run: with a padding mask it turns the input into a nested tensor and outputs
    exactly 0 at padded positions, while torch.export, and so every exported variant, records the ordinary
    path, which computes values there. The reference must be the function that was exported.
    """

    def __init__(self, model: Any, input_names: list[str], num_threads: int = 1) -> None:
        import torch

        self._torch = torch
        self.model = model.eval()
        self.input_names = list(input_names)
        self.num_threads = num_threads

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One forward pass under inference_mode; flattened outputs as float32 (ints keep their dtype)."""
        torch = self._torch
        if torch.get_num_threads() != self.num_threads:
            torch.set_num_threads(self.num_threads)
        args = []
        for name in self.input_names:
            try:
                x = feed[name]
            except KeyError:
                raise missing_input(name, feed, self.input_names) from None
            if x.dtype == np.float64:
                x = x.astype(np.float32)
            args.append(torch.from_numpy(np.ascontiguousarray(x)))
        fast_path = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            with torch.inference_mode():
                out = self.model(*args)
        finally:
            torch.backends.mha.set_fastpath_enabled(fast_path)
        results = []
        for t in flatten_outputs(out):
            t = t.detach()
            if t.is_floating_point() and t.dtype != torch.float32:
                t = t.float()
            results.append(t.cpu().numpy())
        return results
