"""Issue 12 item 1: a `.pt2` must never run code from the file while mobex loads it.

Each crafted archive is a real torch.export.save archive with one member replaced. The control
assertions show that plain `torch.export.load` does run the crafted code (the marker file appears),
so the mobex assertions (no marker, a clear refusal) test the guard and not a harmless file.
"""

from __future__ import annotations

import builtins
import json
import zipfile
from pathlib import Path

import pytest
import torch

from mobex.errors import UsageError
from mobex.safe_pt2 import UnsafeExportedProgram, check_shape_expression
from mobex.sources import exported_program_module


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(13, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _WritesMarker:
    """Unpickling this calls open(marker, "w"): code from the file, visible as a new file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (builtins.open, (self.marker, "w"))


def _plain_pt2(path: Path, dynamic: bool = False) -> Path:
    model = _Linear().eval()
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(model, (torch.zeros(2, 13),), dynamic_shapes=shapes), str(path))
    return path


def _replace_member(src: Path, dst: Path, suffix: str, data: bytes | None = None, add: str | None = None) -> Path:
    """Copy a .pt2, replacing the member ending in `suffix` by `data` (or adding member `add`)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        top = zin.namelist()[0].split("/")[0]
        for info in zin.infolist():
            payload = zin.read(info)
            if data is not None and add is None and info.filename.endswith(suffix):
                payload = data
            zout.writestr(info, payload)
        if add is not None:
            zout.writestr(f"{top}/{add}", data or b"")
    return dst


def _pickled(obj: object, tmp_path: Path) -> bytes:
    buffer = tmp_path / "payload.pt"
    torch.save(obj, buffer)
    return buffer.read_bytes()


@pytest.fixture
def evil_sample_inputs(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "PWNED-sample-inputs"
    plain = _plain_pt2(tmp_path / "plain.pt2")
    evil = _replace_member(
        plain, tmp_path / "evil.pt2", "data/sample_inputs/model.pt", _pickled(_WritesMarker(marker), tmp_path)
    )
    return evil, marker


def _torch_load_ignoring_errors(path: Path) -> None:
    try:
        torch.export.load(str(path))
    except Exception:  # noqa: BLE001 - whatever torch says afterwards, the code already ran
        pass


def test_control_plain_torch_export_load_runs_the_pickle(evil_sample_inputs) -> None:
    evil, marker = evil_sample_inputs
    _torch_load_ignoring_errors(evil)
    assert marker.exists(), "the crafted archive no longer triggers torch's weights_only=False fallback"


def test_pickled_sample_inputs_are_refused_without_running(evil_sample_inputs) -> None:
    evil, marker = evil_sample_inputs
    with pytest.raises(UnsafeExportedProgram, match="needs code to load"):
        exported_program_module(evil)
    assert not marker.exists()


def test_build_with_an_evil_pt2_exits_2_and_runs_nothing(evil_sample_inputs, sample_copy, mobex_cli) -> None:
    evil, marker = evil_sample_inputs
    folder = sample_copy("tabular_mlp")
    (folder / "evil.pt2").write_bytes(evil.read_bytes())
    recipe = folder / "recipe.toml"
    text = recipe.read_text().replace('source = "model:build"', 'source = "evil.pt2"')
    recipe.write_text(text.replace('weights = "weights.safetensors"\n', ""))
    run = mobex_cli("build", str(recipe), "--out", str(folder / "out"))
    assert run.code == 2, run.stderr
    assert "evil.pt2 is refused" in run.stderr and "needs code to load" in run.stderr
    assert "Traceback" not in run.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "member",
    ["data/aotinductor/model/model.so", "data/constants/opaque_obj_0", "data/constants/custom_obj_0", "evil.py"],
)
def test_members_a_plain_export_never_writes_are_refused(tmp_path: Path, member: str) -> None:
    plain = _plain_pt2(tmp_path / "plain.pt2")
    crafted = _replace_member(plain, tmp_path / "crafted.pt2", "", _pickled({"x": 1}, tmp_path), add=member)
    with pytest.raises(UnsafeExportedProgram, match="does not write"):
        exported_program_module(crafted)


def test_pickled_weight_needing_code_is_refused(tmp_path: Path) -> None:
    """A weight marked use_pickle is loaded by torch with weights_only=False; mobex forces True."""
    marker = tmp_path / "PWNED-weight"
    plain = _plain_pt2(tmp_path / "plain.pt2")
    with zipfile.ZipFile(plain) as zf:
        config_name = next(n for n in zf.namelist() if n.endswith("model_weights_config.json"))
        config = json.loads(zf.read(config_name))
    first = next(iter(config["config"].values()))
    first["use_pickle"] = True
    step = _replace_member(plain, tmp_path / "step.pt2", "model_weights_config.json", json.dumps(config).encode())
    crafted = _replace_member(step, tmp_path / "crafted.pt2", f"data/weights/{first['path_name']}",
                              _pickled(_WritesMarker(marker), tmp_path))  # fmt: skip
    with pytest.raises(UnsafeExportedProgram, match="needs code to load"):
        exported_program_module(crafted)
    assert not marker.exists()
    _torch_load_ignoring_errors(crafted)  # control: torch itself runs it
    assert marker.exists()


def test_shape_expressions_are_not_evaluated(tmp_path: Path) -> None:
    """torch parses `expr_str` with sympy.sympify, i.e. eval: a crafted expression would run."""
    marker = tmp_path / "PWNED-sympify"
    plain = _plain_pt2(tmp_path / "dynamic.pt2", dynamic=True)
    with zipfile.ZipFile(plain) as zf:
        graph_name = next(n for n in zf.namelist() if n.endswith("models/model.json"))
        graph = zf.read(graph_name).decode()
    symbol = "Symbol('s77', positive=True, integer=True)"
    assert json.dumps(symbol) in graph  # what torch 2.13 writes for the dynamic batch
    hostile = json.dumps(f"{symbol} if open({str(marker)!r}, 'w') else 0")
    crafted = _replace_member(plain, tmp_path / "crafted.pt2", "models/model.json",
                              graph.replace(json.dumps(symbol), hostile).encode())  # fmt: skip
    with pytest.raises(UnsafeExportedProgram, match="shape expression"):
        exported_program_module(crafted)
    assert not marker.exists()
    _torch_load_ignoring_errors(crafted)  # control
    assert marker.exists()


@pytest.mark.parametrize(
    "expr", ["__import__('os')", "exec(chr(95))", "s0.func", "Symbol(s0)", "s0 if s0 else s1", "lambda: 0"]
)
def test_shape_expression_grammar_refuses_code(expr: str) -> None:
    with pytest.raises(UnsafeExportedProgram):
        check_shape_expression(expr)


@pytest.mark.parametrize(
    "expr", ["Symbol('s77', positive=True, integer=True)", "s0 + 1", "Max(2, s0)", "2*s0", "FloorDiv(s0, 2)", "s0 <= 8"]
)
def test_shape_expressions_torch_writes_are_accepted(expr: str) -> None:
    check_shape_expression(expr)


def test_plain_and_dynamic_exports_still_load(tmp_path: Path) -> None:
    x = torch.randn(2, 13)
    for dynamic in (False, True):
        module = exported_program_module(_plain_pt2(tmp_path / f"ok-{dynamic}.pt2", dynamic=dynamic))
        assert module(x).shape == (2, 3)
    assert torch.load is torch.serialization.load  # the guard is undone after the call


def test_deeply_nested_graph_json_is_refused(tmp_path: Path) -> None:
    plain = _plain_pt2(tmp_path / "plain.pt2")
    deep = ("[" * 200_000 + "]" * 200_000).encode()
    crafted = _replace_member(plain, tmp_path / "crafted.pt2", "models/model.json", deep)
    with pytest.raises(UnsafeExportedProgram, match="nests deeper"):
        exported_program_module(crafted)


def test_the_pruned_model_hand_off_uses_the_same_loader(tmp_path: Path, evil_sample_inputs) -> None:
    from mobex.prune.pruning import load_pruned_model

    evil, marker = evil_sample_inputs
    with pytest.raises(UnsafeExportedProgram):
        load_pruned_model(evil)
    assert not marker.exists()


def test_source_error_is_a_usage_error(evil_sample_inputs) -> None:
    from mobex.sources import _load_exported_program

    with pytest.raises(UsageError, match="is refused"):
        _load_exported_program(evil_sample_inputs[0])
