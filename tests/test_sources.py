"""Every model source kind loads to the same function; unsafe or mismatched weights are refused."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from mobex.errors import UsageError
from mobex.recipe import load_recipe
from mobex.sources import load_model, load_source

TWO_INPUT_MODEL = '''
import torch
from torch import nn


class TinyText(nn.Module):
    """Embedding + masked mean pooling: a two-input model like a text encoder."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, input_ids, attention_mask):
        mask = attention_mask.unsqueeze(-1).to(torch.float32)
        pooled = (self.embed(input_ids) * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self.head(pooled)


def build():
    return TinyText()
'''

RECIPE = """
[model]
name = "tiny-text"
version = "0.1.0"
source = "{source}"
{weights}
task = "classification"

[[inputs]]
name = "input_ids"
shape = [1, 6]
dtype = "int64"

[[inputs]]
name = "attention_mask"
shape = [1, 6]
dtype = "int64"

[data]
validation = "val.npz"

[ios]
variants = ["fp32"]
"""


def _folder(tmp_path: Path) -> Path:
    (tmp_path / "textmodel.py").write_text(textwrap.dedent(TWO_INPUT_MODEL))
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 50, size=(4, 6))
    mask = np.ones((4, 6), dtype=np.int64)
    mask[:, 4:] = 0
    np.savez(tmp_path / "val.npz", input_ids=ids, attention_mask=mask)
    return tmp_path


def _recipe(folder: Path, source: str, weights: str | None = None):
    line = f'weights = "{weights}"' if weights else ""
    (folder / "recipe.toml").write_text(RECIPE.format(source=source, weights=line))
    return load_recipe(folder / "recipe.toml")


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(6).reshape(1, 6) % 50
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    return ids, mask


@pytest.fixture()
def trained(tmp_path: Path):
    folder = _folder(tmp_path)
    torch.manual_seed(1)
    reference = _recipe(folder, "textmodel:build")
    model = load_model(reference)
    expected = model(*_inputs())
    return folder, model, expected


def test_factory_with_safetensors_and_state_dict(trained) -> None:
    from safetensors.torch import save_file

    folder, model, expected = trained
    save_file(model.state_dict(), str(folder / "w.safetensors"))
    torch.save(model.state_dict(), folder / "w.pt")
    for weights in ("w.safetensors", "w.pt"):
        torch.manual_seed(99)  # a different random init: the weights file must win
        loaded = load_model(_recipe(folder, "textmodel:build", weights))
        assert not loaded.training
        torch.testing.assert_close(loaded(*_inputs()), expected)


def test_torchscript_and_exported_program(trained) -> None:
    folder, model, expected = trained
    torch.jit.trace(model, _inputs()).save(str(folder / "model.pt"))
    torch.export.save(torch.export.export(model, _inputs()), str(folder / "model.pt2"))
    for source in ("model.pt", "model.pt2"):
        loaded = load_model(_recipe(folder, source))
        torch.testing.assert_close(loaded(*_inputs()), expected)


def test_pickled_objects_in_weights_are_refused(trained) -> None:
    folder, model, _ = trained
    state = dict(model.state_dict())
    state["evil"] = pickle.loads(pickle.dumps(Path("x")))  # an arbitrary class: needs full unpickling
    torch.save(state, folder / "evil.pt")
    with pytest.raises(UsageError, match=r"cannot be loaded safely \(weights_only=True\)"):
        load_model(_recipe(folder, "textmodel:build", "evil.pt"))


def test_mismatched_weights_name_the_keys(trained) -> None:
    folder, model, _ = trained
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head")}
    torch.save(state, folder / "partial.pt")
    with pytest.raises(UsageError, match=r"missing keys: head\.weight, head\.bias"):
        load_model(_recipe(folder, "textmodel:build", "partial.pt"))


def test_bad_factory_errors(trained) -> None:
    folder, _, _ = trained
    with pytest.raises(UsageError, match="has no callable 'nope'"):
        load_model(_recipe(folder, "textmodel:nope"))
    with pytest.raises(UsageError, match="cannot import module 'missingmod'"):
        load_model(_recipe(folder, "missingmod:build"))
    (folder / "junk.pt").write_bytes(b"not a torchscript file")
    with pytest.raises(UsageError, match="not a TorchScript archive"):
        load_model(_recipe(folder, "junk.pt"))


def test_same_module_name_in_two_recipe_folders(sample_copy) -> None:
    """Every sample has model.py: loading two samples in one process must not reuse the first module."""
    cnn = load_model(load_recipe(sample_copy("digits_cnn") / "recipe.toml"))
    vit = load_model(load_recipe(sample_copy("digits_vit") / "recipe.toml"))
    assert type(cnn).__name__ != type(vit).__name__


RANDOM_INIT_MODEL = '''
import numpy as np
import torch
from torch import nn


class PositionalConv(nn.Module):
    """Left at random init like HuBERT's weight-norm positional conv and DINOv2's position embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3, padding=1, groups=2), dim=2)
        self.position = nn.Parameter(torch.randn(1, 4, 8))
        self.register_buffer("offset", torch.from_numpy(np.random.rand(1, 4, 1).astype(np.float32)))

    def forward(self, x):
        return self.conv(x + self.position) + self.offset


def build():
    return PositionalConv()
'''


def test_factory_random_init_is_the_same_in_every_process(tmp_path: Path) -> None:
    """The reference run and each export worker load the model with their RNGs in different states; a random-init
    factory must still give all of them the same weights (unseeded, HuBERT's parity was cosine 0.92), and loading
    leaves the caller's RNG states as they were."""
    import random

    (tmp_path / "randinit.py").write_text(RANDOM_INIT_MODEL)
    x = torch.linspace(-1, 1, 32).reshape(1, 4, 8)
    outputs, rng_kept = [], []
    for draws in (0, 1000):  # a worker that drew more random numbers before loading the model
        torch.randn(draws)
        np.random.rand(draws)
        random.random()
        before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
        with torch.no_grad():
            outputs.append(load_source(tmp_path, "randinit:build")(x))
        rng_kept.append(torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[2]
                        and np.array_equal(np.random.get_state()[1], before[1]))  # fmt: skip
    torch.testing.assert_close(outputs[0], outputs[1], rtol=0, atol=0)
    assert rng_kept == [True, True]
