"""Core ML conversion on Linux: packages load, carry the right I/O and metadata, and are reproducible.

Core ML cannot run a model off macOS, so these tests check the saved spec and program, never predictions.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import coremltools as ct
import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters import coreml_shims
from mobex.converters.coreml import LABELS_KEY, CoreMLMetadata, convert_coreml, make_reproducible
from mobex.errors import ConversionError, UsageError

torch.set_num_threads(1)


# --- tiny models of each kind the samples use ----------------------------------------------------


class TinyCNN(nn.Module):
    """MobileNet-style: stem conv, depthwise + pointwise convs, BatchNorm, Hardswish, pooled head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.Hardswish(),
            nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.Hardswish(),
        )  # fmt: skip
        self.head = nn.Linear(32, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).mean(dim=(2, 3)))


class TinyAttention(nn.Module):
    """ViT-style block with explicit q/k/v projections, LayerNorm and GELU."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, n, d = tokens.shape
        h = self.norm1(tokens)
        q, k, v = (f(h).reshape(b, n, self.heads, d // self.heads).transpose(1, 2) for f in (self.q, self.k, self.v))
        attn = ((q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5).softmax(-1)
        tokens = tokens + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
        return tokens + self.mlp(self.norm2(tokens))


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class BertLastHidden(nn.Module):
    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def tiny_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    ids = torch.randint(0, 100, (1, 16))
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, 12:] = 0
    return BertLastHidden(transformers.BertModel(config)).eval(), {"input_ids": ids, "attention_mask": mask}


def model_case(kind: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    if kind == "cnn":
        return TinyCNN().eval(), {"image": torch.randn(1, 3, 32, 32)}
    if kind == "attention":
        return TinyAttention().eval(), {"tokens": torch.randn(1, 8, 32)}
    if kind == "mlp":
        return TinyMLP().eval(), {"features": torch.randn(1, 64)}
    return tiny_bert()


OUTPUT_SHAPES = {"cnn": (1, 10), "attention": (1, 8, 32), "mlp": (1, 10), "bert": (1, 16, 32)}


def metadata(**overrides) -> CoreMLMetadata:
    fields = dict(
        name="tiny", version="1.2.3", description="a tiny test model", author="mobex tests",
        license="Apache-2.0", labels=["cat", "dog", "émeu"], extra={"mobex.recipe_sha256": "ab" * 32},
    )  # fmt: skip
    fields.update(overrides)
    return CoreMLMetadata(**fields)


def package_digest(package: Path) -> dict[str, str]:
    return {
        str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(package.rglob("*"))
        if p.is_file()
    }


def program_op_types(package: Path) -> set[str]:
    spec = ct.utils.load_spec(str(package))
    return {
        op.type
        for function in spec.mlProgram.functions.values()
        for block in function.block_specializations.values()
        for op in block.operations
    }


@pytest.fixture(scope="module")
def coreml_converted(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], object]:
    """Each tiny model converted once at fp32 and fp16 (conversion dominates the test time)."""
    out = tmp_path_factory.mktemp("coreml")
    converted = {}
    for kind in ("cnn", "attention", "mlp", "bert"):
        model, inputs = model_case(kind)
        for precision in ("fp32", "fp16"):
            converted[kind, precision] = convert_coreml(
                model, inputs, out / f"{kind}-{precision}.mlpackage", precision=precision, metadata=metadata()
            )
    return converted


# --- conversion of each model kind -----------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("kind", ["cnn", "attention", "mlp", "bert"])
def test_converted_package_loads_with_the_declared_io(coreml_converted, kind: str, precision: str) -> None:
    variant = coreml_converted[kind, precision]
    _, example = model_case(kind)

    spec = ct.utils.load_spec(str(variant.path))
    assert spec.WhichOneof("Type") == "mlProgram"
    assert spec.specificationVersion == int(ct.target.iOS16)
    ct.models.MLModel(str(variant.path), skip_model_load=True)

    assert (variant.target, variant.platform, variant.quantization) == ("coreml", "ios", precision)
    assert [i.name for i in variant.inputs] == list(example)
    for spec_in, (name, tensor) in zip(variant.inputs, example.items(), strict=True):
        assert spec_in.shape == tuple(tensor.shape), name
        assert spec_in.dtype == ("float32" if tensor.is_floating_point() else "int32"), name
    assert [(o.name, o.shape, o.dtype) for o in variant.outputs] == [("output_0", OUTPUT_SHAPES[kind], "float32")]
    assert variant.size_bytes == sum(p.stat().st_size for p in variant.path.rglob("*") if p.is_file())
    assert variant.notes[0] == "converted via torch.export"


@pytest.mark.parametrize("kind", ["cnn", "attention", "mlp", "bert"])
def test_fp16_computes_in_fp16_but_keeps_float32_io(coreml_converted, kind: str) -> None:
    fp16, fp32 = coreml_converted[kind, "fp16"], coreml_converted[kind, "fp32"]
    fp16_program = (fp16.path / "Data/com.apple.CoreML/model.mlmodel").read_bytes()
    fp32_program = (fp32.path / "Data/com.apple.CoreML/model.mlmodel").read_bytes()
    # fp16 programs cast float32 inputs to fp16 at the top and back at the end.
    assert b"cast_fp16" in fp16_program and b"cast_fp16" not in fp32_program
    assert "cast" in program_op_types(fp16.path)
    assert [i.dtype for i in fp16.inputs] == [i.dtype for i in fp32.inputs]
    assert fp16.size_bytes < fp32.size_bytes


def test_metadata_is_written_and_conversion_date_dropped(coreml_converted) -> None:
    model = ct.models.MLModel(str(coreml_converted["cnn", "fp16"].path), skip_model_load=True)
    assert (model.short_description, model.version, model.author, model.license) == (
        "a tiny test model", "1.2.3", "mobex tests", "Apache-2.0",
    )  # fmt: skip
    user = dict(model.user_defined_metadata)
    assert json.loads(user[LABELS_KEY]) == ["cat", "dog", "émeu"]
    assert user["mobex.recipe_sha256"] == "ab" * 32
    assert user["mobex.name"] == "tiny"
    assert "com.github.apple.coremltools.conversion_date" not in user
    assert user["com.github.apple.coremltools.version"] == ct.__version__


def test_bert_int64_inputs_become_int32_and_need_the_mask_shims(coreml_converted) -> None:
    variant = coreml_converted["bert", "fp16"]
    assert {i.name: i.dtype for i in variant.inputs} == {"input_ids": "int32", "attention_mask": "int32"}
    assert any("'input_ids' is int64 in torch, declared int32" in n for n in variant.notes)
    shim_note = next(n for n in variant.notes if n.startswith("coremltools 9.0 shims used"))
    assert "new_ones" in shim_note and "bool-bitwise" in shim_note


def test_input_and_output_descriptions_and_output_names(tmp_path: Path) -> None:
    model, example = model_case("mlp")
    variant = convert_coreml(
        model, example, tmp_path / "m.mlpackage", precision="fp32", output_names=["logits"],
        metadata=metadata(input_descriptions={"features": "64 features"}, output_descriptions={"logits": "scores"}),
    )  # fmt: skip
    loaded = ct.models.MLModel(str(variant.path), skip_model_load=True)
    assert [o.name for o in variant.outputs] == ["logits"]
    assert loaded.input_description["features"] == "64 features"
    assert loaded.output_description["logits"] == "scores"


def test_ios18_target_sets_the_spec_version(tmp_path: Path) -> None:
    model, example = model_case("mlp")
    variant = convert_coreml(
        model, example, tmp_path / "m.mlpackage", precision="fp16", deployment_target="iOS18", metadata=metadata()
    )
    assert ct.utils.load_spec(str(variant.path)).specificationVersion == int(ct.target.iOS18)


# --- reproducible, atomic packages -----------------------------------------------------------------


def test_same_model_gives_byte_identical_packages(tmp_path: Path) -> None:
    model, example = model_case("attention")
    first = convert_coreml(model, example, tmp_path / "a" / "x.mlpackage", precision="fp16", metadata=metadata())
    second = convert_coreml(model, example, tmp_path / "b" / "y.mlpackage", precision="fp16", metadata=metadata())
    assert package_digest(first.path) == package_digest(second.path)
    assert sorted(package_digest(first.path)) == [
        "Data/com.apple.CoreML/model.mlmodel",
        "Data/com.apple.CoreML/weights/weight.bin",
        "Manifest.json",
    ]  # no ExecuTorch debug map

    manifest = json.loads((first.path / "Manifest.json").read_text())
    root = manifest["rootModelIdentifier"]
    assert manifest["itemInfoEntries"][root]["path"] == "com.apple.CoreML/model.mlmodel"
    before = (first.path / "Manifest.json").read_bytes()
    ct.models.MLModel(str(first.path), skip_model_load=True)
    ct.utils.load_spec(str(first.path))
    assert (first.path / "Manifest.json").read_bytes() == before  # coremltools' loader keeps our ids


def test_manifest_ids_follow_the_content(tmp_path: Path) -> None:
    model, example = model_case("mlp")
    variant = convert_coreml(model, example, tmp_path / "m.mlpackage", precision="fp32", metadata=metadata())
    ids = set(json.loads((variant.path / "Manifest.json").read_text())["itemInfoEntries"])
    weights = variant.path / "Data/com.apple.CoreML/weights/weight.bin"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x01")
    make_reproducible(variant.path)
    assert set(json.loads((variant.path / "Manifest.json").read_text())["itemInfoEntries"]).isdisjoint(ids)


def test_existing_package_is_replaced_without_leftovers(tmp_path: Path) -> None:
    model, example = model_case("mlp")
    out = tmp_path / "m.mlpackage"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    convert_coreml(model, example, out, precision="fp32", metadata=metadata())
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m.mlpackage"]


# --- torch.export first, trace as fallback ---------------------------------------------------------


class DataDependentBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.sum() > 0 else x - 1


class MatrixInverse(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x)


def test_falls_back_to_trace_when_export_fails(tmp_path: Path) -> None:
    variant = convert_coreml(
        DataDependentBranch(), {"x": torch.ones(1, 4)}, tmp_path / "m.mlpackage", precision="fp32",
        metadata=metadata(),
    )  # fmt: skip
    assert variant.notes[0] == "converted via torch.jit.trace"
    assert any(n.startswith("torch.export failed (") for n in variant.notes)
    ct.utils.load_spec(str(variant.path))


class _InverseHead(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.inv(x)


class _DeepInverse(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.blocks = nn.ModuleList([nn.Identity(), nn.Identity(), _InverseHead()])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.blocks[2](x + 1)


def test_conversion_error_names_the_module_path_and_a_workaround(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as info:
        convert_coreml(_DeepInverse(), {"x": torch.eye(3)[None]}, tmp_path / "m.mlpackage", precision="fp32",
                       metadata=metadata())  # fmt: skip
    assert "op linalg_inv in module encoder.blocks.2" in info.value.message
    assert "invert outside the model" in info.value.hint


def test_conversion_error_names_both_paths(tmp_path: Path) -> None:
    with pytest.raises(ConversionError) as info:
        convert_coreml(
            MatrixInverse(), {"x": torch.eye(3)[None]}, tmp_path / "m.mlpackage", precision="fp32",
            metadata=metadata(),
        )  # fmt: skip
    assert "torch.export:" in info.value.message and "torch.jit.trace:" in info.value.message
    assert "linalg_inv" in info.value.message
    assert not (tmp_path / "m.mlpackage").exists()


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"deployment_target": "iOS14"}, "unknown Core ML deployment target"),
        ({"deployment_target": "android"}, "unknown Core ML deployment target"),
        ({"precision": "int8"}, "unknown Core ML precision"),
        ({"out_path": "model.mlmodel"}, "must end in .mlpackage"),
        ({"output_names": ["a", "b"]}, "2 output names given"),
        ({"metadata": metadata(input_descriptions={"image": "x"})}, "metadata describes input 'image'"),
    ],
)
def test_usage_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    model, example = model_case("mlp")
    args = {"precision": "fp32", "metadata": metadata(), "out_path": "m.mlpackage", **kwargs}
    out_path = tmp_path / args.pop("out_path")
    with pytest.raises(UsageError, match=message):
        convert_coreml(model, example, out_path, **args)


# --- shims: each converts a graph that stock coremltools 9.0 cannot ---------------------------------


class ExpandByBatch(nn.Module):  # scalar-cast: trace turns x.shape[0] into aten::Int of a [1] const
    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.ones(1, 1, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.token.expand(x.shape[0], -1, -1), x], 1)


class NewOnesMask(nn.Module):  # new_ones: the scalar bool transformers builds its masks from
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = x.new_ones((), dtype=torch.bool) & (x > 0)
        return x * keep.to(x.dtype) + x.new_ones(x.shape)


class MaskAndOr(nn.Module):  # bool-bitwise (+ where-scalar for the 0.0 branch)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(((x > 0) & (x < 1)) | (x < -1), x, 0.0)


class MaxPoolDefaultStride(nn.Module):  # max-pool-stride: export drops stride=[] from the call
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.max_pool2d(x, 2)


class LSTMCellLoop(nn.Module):  # recurrent-cells (export) / unsafe-chunk (trace): LSTMCell stepped with state
    def __init__(self) -> None:
        super().__init__()
        self.init = nn.Linear(8, 32)
        self.cell = nn.LSTMCell(8, 16)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, c = self.init(x[:, 0]).tanh().chunk(2, dim=-1)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return h, c


class GRUCellLoop(nn.Module):  # recurrent-cells (export) / unsafe-chunk (trace)
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(8, 16)
        self.h0 = nn.Parameter(torch.full((1, 16), 0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.h0
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return h


class UnsafeChunk(nn.Module):  # unsafe-chunk: torch.export names it unsafe_split
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b, c = torch._VF.unsafe_chunk(x, 3, 1)
        return a * b - c[:, :1]


class PReLUAfterLinear(nn.Module):  # prelu-rank: per-channel alpha on a rank-2 input
    def __init__(self) -> None:
        super().__init__()
        self.linear, self.act = nn.Linear(8, 6), nn.PReLU(6)
        with torch.no_grad():
            self.act.weight.copy_(torch.linspace(-0.5, 0.5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.linear(x))


class PReLUAfterConv1d(nn.Module):  # prelu-rank: per-channel alpha on a rank-3 input
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.act = nn.Conv1d(4, 6, 3), nn.PReLU(6)
        with torch.no_grad():
            self.act.weight.copy_(torch.linspace(-0.5, 0.5, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class GeluTanh(nn.Module):  # gelu-tanh: torch.export passes approximate="tanh" as a keyword
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(3 * x, approximate="tanh")


class NearestExact(nn.Module):  # nearest-exact: no converter in 9.0
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, scale_factor=2, mode="nearest-exact") + 1


class Framing(nn.Module):  # tensor-unfold: sliding windows along the time axis, then along the channels
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unfold(-1, 5, 3).sum(-1) + x.unfold(1, 3, 1).mean(-1)[..., :6]


class ZerosLikeMask(nn.Module):  # zeros-like-dtype: F._canonical_mask's float mask from a bool mask (torch.export)
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = x > 1.0
        return (x + torch.zeros_like(pad, dtype=torch.float32).masked_fill(pad, float("-inf"))).softmax(-1)


class PaddedEncoderLayer(nn.Module):  # zeros-like-dtype: nn.TransformerEncoderLayer with a bool key-padding mask
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        return self.layer(x, src_key_padding_mask=~keep)


class IntIndexTable(nn.Module):  # zeros-dtype: BEiT's relative position index, an int64 zeros filled with ints
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = torch.zeros(3, 3, dtype=torch.int64)
        index[1:, 1:] = torch.arange(4).view(2, 2)
        index[0, :] = 4
        index[0, 0] = x.shape[0] - 2  # scalar-slot-copy: traced, a size-derived scalar is a [1] update
        return x[index.view(-1)].view(3, 3, -1)


SHIM_CASES = {
    "scalar-cast": (ExpandByBatch, (2, 3, 4), "trace", "only 0-dimensional arrays"),
    "new_ones": (NewOnesMask, (2, 3, 4), "export", "new_ones"),
    "bool-bitwise": (MaskAndOr, (2, 3, 4), "export", "kind __and__"),
    "where-scalar": (MaskAndOr, (2, 3, 4), "export", None),
    "max-pool-stride": (MaxPoolDefaultStride, (1, 4, 8, 8), "export", "expected minimum 3 inputs"),
    "recurrent-cells": (LSTMCellLoop, (1, 5, 8), "export", "Unsupported fx node lstm_cell"),
    "recurrent-cells/gru": (GRUCellLoop, (1, 5, 8), "export", "Unsupported fx node gru_cell"),
    "unsafe-chunk": (LSTMCellLoop, (1, 5, 8), "trace", "op 'unsafe_chunk' not implemented"),
    "unsafe-chunk/gru": (GRUCellLoop, (1, 5, 8), "trace", "op 'unsafe_chunk' not implemented"),
    "unsafe-chunk/export": (UnsafeChunk, (2, 9), "export", "Unsupported fx node unsafe_split"),
    "prelu-rank": (PReLUAfterLinear, (2, 8), "export", "rank 3 or rank 5 input is only supported"),
    "prelu-rank/conv1d": (PReLUAfterConv1d, (1, 4, 10), "trace", "rank 3 or rank 5 input is only supported"),
    "gelu-tanh": (GeluTanh, (2, 16), "export", None),  # stock converts it, wrongly: see the test below
    "nearest-exact": (NearestExact, (1, 3, 4, 5), "trace", "nearest_exact"),
    "tensor-unfold": (Framing, (2, 3, 20), "export", "unfold"),
    "tensor-unfold/trace": (Framing, (2, 3, 20), "trace", "unfold"),
    "zeros-like-dtype": (ZerosLikeMask, (2, 8), "export", None),  # stock converts it, wrongly: see below
    "zeros-dtype": (IntIndexTable, (5, 2), "export", "updates has dtype int32 whereas x has dtype fp32"),
    "scalar-slot-copy": (IntIndexTable, (5, 2), "trace", r"updates tensor should have shape \[\]. Got \(1,\)"),
}


def _ct_convert(module: nn.Module, x: torch.Tensor, path: str):
    source = (
        torch.export.export(module, (x,)).run_decompositions({}) if path == "export" else torch.jit.trace(module, (x,))
    )
    return ct.convert(
        source, inputs=[ct.TensorType(name="x", shape=tuple(x.shape), dtype=np.float32)],
        minimum_deployment_target=ct.target.iOS16, skip_model_load=True,
    )  # fmt: skip


@pytest.fixture()
def coreml_stock_registry():
    """coremltools' own converters for the length of one test, shims back afterwards."""
    coreml_shims.uninstall_shims()
    try:
        yield
    finally:
        coreml_shims.install_shims()


def test_every_shim_has_a_case() -> None:
    assert {s.name for s in coreml_shims.SHIMS} == {case.split("/")[0] for case in SHIM_CASES}
    assert all(s.upstream for s in coreml_shims.SHIMS)


@pytest.mark.parametrize("shim", sorted(SHIM_CASES))
def test_shim_makes_the_graph_convert(tmp_path: Path, shim: str) -> None:
    module, shape, path, _ = SHIM_CASES[shim]
    coreml_shims.install_shims()
    coreml_shims.reset_fired()
    _ct_convert(module().eval(), torch.randn(shape), path)
    assert shim.split("/")[0] in coreml_shims.fired()


@pytest.mark.parametrize("case", ["recurrent-cells", "recurrent-cells/gru", "unsafe-chunk/export", "prelu-rank",
                                  "prelu-rank/conv1d", "gelu-tanh", "nearest-exact", "tensor-unfold",
                                  "zeros-like-dtype", "zeros-dtype"])  # fmt: skip
def test_shimmed_programs_match_torch(tmp_path: Path, case: str) -> None:
    """The shims' MIL is right, not just accepted: fp32 programs in the reference interpreter match torch."""
    from mobex.runtime.mil import MilReferenceRunner

    module, shape, _, _ = SHIM_CASES[case]
    torch.manual_seed(0)
    model, x = module().eval(), torch.randn(shape)
    variant = convert_coreml(model, {"x": x}, tmp_path / "m.mlpackage", precision="fp32", metadata=metadata())
    assert any(case.split("/")[0] in n for n in variant.notes if n.startswith("coremltools 9.0 shims used"))
    with torch.no_grad():
        want = [t.numpy() for t in coreml_shims_flat(model(x))]
    got = MilReferenceRunner(variant.path).run({"x": x.numpy()})
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-5)


def coreml_shims_flat(value: object) -> list[torch.Tensor]:
    return list(value) if isinstance(value, tuple) else [value]


@pytest.mark.parametrize("shim", sorted(s for s, case in SHIM_CASES.items() if case[3]))
def test_stock_coremltools_still_needs_the_shim(coreml_stock_registry, shim: str) -> None:
    """If this fails after a coremltools upgrade, upstream fixed the bug: delete the shim."""
    module, shape, path, error = SHIM_CASES[shim]
    with pytest.raises(Exception, match=error):
        _ct_convert(module().eval(), torch.randn(shape), path)


def test_stock_where_scalar_other_is_missing(coreml_stock_registry) -> None:
    class WhereScalar(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.where(x > 0, x, 0.0)

    with pytest.raises(NotImplementedError, match="where.scalarother"):
        _ct_convert(WhereScalar().eval(), torch.randn(2, 3), "export")


def _gelu_modes() -> list[str]:
    """The `mode` of every gelu op coremltools emits for GeluTanh (pymil program, torch.export path)."""
    x = torch.randn(2, 16)
    program = ct.convert(
        torch.export.export(GeluTanh().eval(), (x,)).run_decompositions({}),
        inputs=[ct.TensorType(name="x", shape=tuple(x.shape), dtype=np.float32)], convert_to="milinternal",
        minimum_deployment_target=ct.target.iOS16,
    )  # fmt: skip
    return [op.mode.val for op in program.functions["main"].operations if op.op_type == "gelu"]


def test_stock_coremltools_silently_converts_tanh_gelu_as_exact(coreml_stock_registry) -> None:
    """If this fails after a coremltools upgrade, the keyword is read upstream: delete the gelu-tanh shim."""
    assert _gelu_modes() == ["EXACT"]


def test_gelu_tanh_shim_keeps_the_approximation() -> None:
    coreml_shims.install_shims()
    assert _gelu_modes() == ["TANH_APPROXIMATION"]


def _fp32_in_interpreter(
    module: nn.Module, feed: dict[str, torch.Tensor], path: Path, source: str = "export"
) -> list[np.ndarray]:
    """`module` via torch.export (or trace) and ct.convert (fp32, the registry as it is), run in the MIL interpreter."""
    from mobex.runtime.mil import MilReferenceRunner

    args = tuple(feed.values())
    graph = torch.export.export(module, args).run_decompositions({}) if source == "export" else None
    mlmodel = ct.convert(
        graph if graph is not None else torch.jit.trace(module, args),
        inputs=[ct.TensorType(name=k, shape=tuple(v.shape), dtype=np.float32 if v.is_floating_point() else np.int32)
                for k, v in feed.items()],
        minimum_deployment_target=ct.target.iOS16, compute_precision=ct.precision.FLOAT32, skip_model_load=True,
    )  # fmt: skip
    mlmodel.save(str(path))
    return MilReferenceRunner(path).run({k: v.numpy() for k, v in feed.items()})


def _padded_encoder_case() -> tuple[nn.Module, dict[str, torch.Tensor], np.ndarray]:
    torch.manual_seed(0)
    model = PaddedEncoderLayer().eval()
    feed = {"x": torch.randn(1, 6, 16), "keep": torch.tensor([[True, True, True, True, False, False]])}
    with torch.no_grad():
        want = model(*feed.values()).numpy()
    return model, feed, want


def test_stock_coremltools_silently_drops_the_zeros_like_dtype(coreml_stock_registry, tmp_path: Path) -> None:
    """If this fails after a coremltools upgrade, the keyword is read upstream: delete the zeros-like-dtype shim.

    Stock 9.0 keeps the bool dtype, so the -inf fill becomes True and attention reads it as a keep-mask."""
    model, feed, want = _padded_encoder_case()
    got = _fp32_in_interpreter(model, feed, tmp_path / "stock.mlpackage")[0]
    assert np.abs(got - want).max() > 0.1


def test_zeros_like_dtype_shim_masks_the_padding_like_torch(tmp_path: Path) -> None:
    coreml_shims.install_shims()
    coreml_shims.reset_fired()
    model, feed, want = _padded_encoder_case()
    got = _fp32_in_interpreter(model, feed, tmp_path / "shim.mlpackage")[0]
    assert "zeros-like-dtype" in coreml_shims.fired()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_scalar_slot_copy_shim_matches_torch_on_the_trace_path(tmp_path: Path) -> None:
    """convert_coreml takes torch.export, so the trace-only shim is checked through ct.convert directly."""
    coreml_shims.install_shims()
    coreml_shims.reset_fired()
    torch.manual_seed(0)
    model, x = IntIndexTable().eval(), torch.randn(5, 2)
    got = _fp32_in_interpreter(model, {"x": x}, tmp_path / "trace.mlpackage", source="trace")[0]
    assert "scalar-slot-copy" in coreml_shims.fired()
    np.testing.assert_allclose(got, model(x).numpy(), atol=1e-6, rtol=1e-6)


def test_install_and_uninstall_are_idempotent() -> None:
    registry = coreml_shims._registry().name_to_func_mapping
    coreml_shims.install_shims()
    shimmed = dict(registry)
    coreml_shims.install_shims()
    assert registry == shimmed
    coreml_shims.uninstall_shims()
    assert "new_ones" not in registry and "__and__" not in registry
    coreml_shims.uninstall_shims()
    coreml_shims.install_shims()
    assert registry == shimmed


def test_coremltools_imports_without_the_converters_mobex_never_uses() -> None:
    """A fresh process: coremltools comes up without scikit-learn, ExecuTorch or transformers, which import
    normally afterwards (checked in a subprocess: this one imported coremltools the ordinary way)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from mobex.runtime.coremltools_import import UNUSED_BY_MOBEX, import_coremltools\n"
        "ct = import_coremltools()\n"
        "assert not any(name in sys.modules for name in UNUSED_BY_MOBEX), sorted(sys.modules)\n"
        "from coremltools import _deps\n"
        "assert not _deps._HAS_SKLEARN and not _deps._HAS_EXECUTORCH and _deps._HAS_TORCH\n"
        "import sklearn, transformers\n"
        "assert import_coremltools() is ct\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert out.stdout.strip().endswith("ok"), out.stderr[-2000:]
