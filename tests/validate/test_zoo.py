"""The transformers zoo (scripts/zoo.py): random-init models through Core ML fp32/fp16 and the MIL interpreter.

fp32 programs must match torch within 1e-4 (relative to the output's scale); fp16 programs within the
fp16 gate's cosine and SNR (mobex.validate.gates). The heavier configs are marked slow.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

import pytest

from mobex.metrics.limits import DEFAULT_GATES

ZOO_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "zoo.py"
SLOW = {"mobilevit", "mobilenet_v2", "convnext", "efficientnet"}
FP32_REL_TOL = 1e-4



def _zoo():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("mobex_zoo", ZOO_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


zoo = _zoo()


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in zoo.ZOO])
def test_zoo_model(name: str, tmp_path: Path) -> None:
    import torch

    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(1)
    result = zoo.run_case(zoo.ZOO[name], tmp_path)
    assert result.converts == {"fp32": True, "fp16": True}, result.errors
    assert result.unsupported_ops == [] and result.errors == {}, (result.unsupported_ops, result.errors)
    assert result.rel_error["fp32"] <= FP32_REL_TOL, result.max_abs_error
    gate = DEFAULT_GATES["fp16"]
    assert result.cosine["fp16"] >= gate["cosine_min"], result.cosine
    assert result.snr_db["fp16"] >= gate["snr_db"], result.snr_db
    assert result.rel_error["fp16"] > 0  # the fp16 program really rounds (the check is not vacuous)
    assert math.isfinite(result.max_abs_error["fp16"])
