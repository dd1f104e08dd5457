"""MLP for the scikit-learn wine data set (13 raw chemical measurements -> 3 cultivars).

Input ``features``: float32 [N, 13], raw (unscaled) measurements in scikit-learn's feature order.
Output ``logits``: float32 [N, 3].

Standardisation is part of the model (``mean`` / ``std`` buffers computed on the training split and
saved with the weights), so apps feed raw features and cannot get the scaling wrong.
"""

import torch
from torch import Tensor, nn

NUM_FEATURES = 13


class WineMLP(nn.Module):
    def __init__(self, num_features: int = NUM_FEATURES, num_classes: int = 3, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(num_features))
        self.register_buffer("std", torch.ones(num_features))
        self.net = nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, features: Tensor) -> Tensor:
        return self.net((features - self.mean) / self.std)


def build() -> nn.Module:
    """Return the architecture, randomly initialised (identity scaling); weights.safetensors has the rest."""
    return WineMLP()
