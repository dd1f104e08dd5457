"""TorchRunner: the reference is the function torch.export records, not torch's eager attention fast path."""

from __future__ import annotations

import numpy as np
import torch

from mobex.runtime.torch_model import TorchRunner


class PaddedEncoder(torch.nn.Module):
    """nn.TransformerEncoder as users write it (enable_nested_tensor defaults to True) with a padding mask."""

    def __init__(self) -> None:
        super().__init__()
        layer = torch.nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, num_layers=2)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        return self.encoder(x, src_key_padding_mask=pad)


def test_reference_matches_the_exported_program_at_padded_positions() -> None:
    torch.manual_seed(0)
    model = PaddedEncoder().eval()
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[:, 4:] = True
    with torch.no_grad():
        eager = model(x, pad)  # the fast path: nested tensors, zeros where padded
    exported = torch.export.export(model, (x, pad)).module()(x, pad)
    assert float(eager[:, 4:].abs().max()) == 0.0 and float(exported[:, 4:].abs().max()) > 0.1  # the two differ
    got = TorchRunner(model, ["x", "pad"]).run({"x": x.numpy(), "pad": pad.numpy()})[0]
    np.testing.assert_allclose(got, exported.detach().numpy(), atol=1e-5)
    assert torch.backends.mha.get_fastpath_enabled()  # restored after the run
