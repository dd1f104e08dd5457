"""A regression model with two outputs goes through the whole build: names, per-output parity, MAE."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np

from mobex.pipeline import BuildOptions, build
from mobex.recipe import load_recipe

MODEL = """
import torch
from torch import nn


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU())
        self.value = nn.Linear(16, 1)
        self.embed = nn.Linear(16, 4)

    def forward(self, x):
        h = self.body(x)
        return self.value(h), self.embed(h)


def build():
    torch.manual_seed(0)
    return TwoHeads()
"""

RECIPE = """
[model]
name = "two-heads"
version = "0.1.0"
source = "model:build"
task = "regression"

[[inputs]]
name = "x"
shape = [1, 10]

[[outputs]]
name = "value"
[[outputs]]
name = "embedding"

[data]
validation = "val.npz"

[android]
variants = ["fp32", "dynamic-int8"]

[ios]
variants = ["fp16"]

[latency]
threads = [1]
runs = 10
"""


def test_two_output_regression_build(tmp_path: Path) -> None:
    from sklearn.datasets import load_diabetes

    (tmp_path / "model.py").write_text(textwrap.dedent(MODEL))
    (tmp_path / "recipe.toml").write_text(RECIPE)
    features, target = load_diabetes(return_X_y=True)
    np.savez(tmp_path / "val.npz", x=features[:64].astype(np.float32), labels=target[:64].astype(np.float32))
    result = build(load_recipe(tmp_path / "recipe.toml"), BuildOptions(out_dir=tmp_path / "out", jobs=1))
    assert result.passed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert "mae" in report["reference"]["metrics"]
    for variant in report["variants"]:
        outputs = variant["parity"]["outputs"]
        assert [o["name"] for o in outputs] == ["value", "embedding"]
        assert variant["parity"]["max_abs_error"] == max(o["max_abs_error"] for o in outputs)
        assert "top1_agreement" not in variant["parity"]  # not a classifier
        assert [t["name"] for t in variant["outputs"]] == ["value", "embedding"]
    fp32 = next(v for v in report["variants"] if v["id"] == "android/fp32")
    assert fp32["parity"]["max_abs_error"] < 1e-4
