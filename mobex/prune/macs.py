"""Params and MACs of a torch model, counted on one forward pass of the recipe's example inputs.

Why count ourselves: the report must show what pruning bought, for unstructured pruning too, where
the dense MAC count does not move but the work a sparse kernel could skip does. Totals come from
`torch.utils.flop_counter.FlopCounterMode` (convolutions, linear layers and every matmul, attention
included; MACs = FLOPs / 2); per-layer numbers from forward hooks on Conv/Linear modules, which also
count the MACs whose weight is zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def weight_layer_types() -> tuple[type, ...]:
    """Module types whose `weight` pruning acts on (the layers that carry the MACs)."""
    from torch import nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)


@dataclass
class LayerCount:
    """One Conv/Linear layer: its weight, and the MACs it spent on the example inputs."""

    name: str
    kind: str
    weight_shape: tuple[int, ...]
    weights: int
    nonzero_weights: int
    macs: int
    nonzero_macs: int


@dataclass
class ModelCount:
    params: int
    nonzero_params: int
    macs: int
    nonzero_macs: int  # MACs left when every multiplication by a zero weight is skipped
    layers: dict[str, LayerCount] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "params": self.params,
            "nonzero_params": self.nonzero_params,
            "macs": self.macs,
            "nonzero_macs": self.nonzero_macs,
        }


def count_model(model: torch.nn.Module, example_inputs: tuple) -> ModelCount:
    """Params (all, and non-zero) and MACs (dense, and with zero weights skipped) for one forward pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    layers: dict[str, LayerCount] = {}
    hooks = []

    def hook_for(name: str):  # noqa: ANN202
        def hook(module: torch.nn.Module, args: tuple, out: torch.Tensor) -> None:
            weight = module.weight.detach()
            if isinstance(module, torch.nn.Linear):
                positions = out.numel() // module.out_features
            elif isinstance(module, torch.nn.modules.conv._ConvTransposeNd):
                positions = args[0].numel() // module.in_channels  # each input position uses the whole weight
            else:  # each output position (all channels) uses the whole weight once
                positions = out.numel() // module.out_channels
            nonzero = int(torch.count_nonzero(weight))
            dense, sparse = positions * weight.numel(), positions * nonzero
            prev = layers.get(name)  # a module called several times adds up
            layers[name] = LayerCount(
                name=name,
                kind=type(module).__name__,
                weight_shape=tuple(weight.shape),
                weights=weight.numel(),
                nonzero_weights=nonzero,
                macs=dense + (prev.macs if prev else 0),
                nonzero_macs=sparse + (prev.nonzero_macs if prev else 0),
            )

        return hook

    for name, module in model.named_modules():
        if isinstance(module, weight_layer_types()) and isinstance(getattr(module, "weight", None), torch.Tensor):
            hooks.append(module.register_forward_hook(hook_for(name)))
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(*example_inputs)
    finally:
        for h in hooks:
            h.remove()
    macs = counter.get_total_flops() // 2
    skipped = sum(layer.macs - layer.nonzero_macs for layer in layers.values())
    params = _effective_parameters(model)
    return ModelCount(
        params=sum(p.numel() for p in params),
        nonzero_params=sum(int(torch.count_nonzero(p.detach())) for p in params),
        macs=int(macs),
        nonzero_macs=int(max(macs - skipped, 0)),
        layers=layers,
    )


def _effective_parameters(model: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter as the forward pass sees it: while `torch.nn.utils.prune` masks are attached,
    `weight_orig` is the parameter and `weight` (masked) is what counts."""
    out = []
    for module in model.modules():
        for pname, param in module._parameters.items():
            if param is None:
                continue
            if pname.endswith("_orig") and hasattr(module, pname[: -len("_orig")] + "_mask"):
                out.append(getattr(module, pname[: -len("_orig")]))
            else:
                out.append(param)
    return out
