"""mobex's litert-torch lowering fixes: each one against litert-torch's own path on the same model.

Stock is litert-torch with `tflite_lowering.uninstall()`; fixed is `convert_tflite` (which installs
the fixes). Both run in the real LiteRT interpreter with XNNPACK.
"""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.converters import tflite_lowering
from mobex.converters.tflite import convert_tflite
from mobex.runtime.litert import TfliteRunner

torch.set_num_threads(1)


def op_counts(path: Path) -> collections.Counter:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return collections.Counter(op["op_name"] for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE")


def stock_convert(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """litert-torch without mobex's fixes (restored afterwards)."""
    import litert_torch

    tflite_lowering.uninstall()
    try:
        litert_torch.convert(model.eval(), (x,)).export(str(path))
    finally:
        tflite_lowering.install()
    return path


def fixed_convert(model: nn.Module, x: torch.Tensor, path: Path) -> Path:
    convert_tflite(model, {"x": x}, path)
    return path


def assert_matches_torch(path: Path, model: nn.Module, x: torch.Tensor, atol: float = 1e-5) -> None:
    runner = TfliteRunner(path)
    feed = {runner.inputs[0].name: x.numpy()}
    with torch.no_grad():
        want = model(x)
    want = want if isinstance(want, tuple) else (want,)
    for got, ref in zip(runner.run(feed), want, strict=True):
        np.testing.assert_allclose(got, ref.numpy(), atol=atol, rtol=1e-5)


# --- prelu ---------------------------------------------------------------------------------------


class PReLUNet(nn.Module):
    """PReLU per channel after Conv2d (NHWC in TFLite) and after Linear, plus one shared-alpha PReLU."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.PReLU(8)
        self.conv2, self.act2 = nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.PReLU(8)
        self.fc, self.act3, self.act4 = nn.Linear(8, 6), nn.PReLU(6), nn.PReLU()
        with torch.no_grad():
            for act in (self.act1, self.act2, self.act3):
                act.weight.uniform_(-0.5, 0.5)  # per channel and of both signs: broadcasting is tested

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.act4(self.act3(self.fc(y.mean((2, 3)))))


def test_stock_litert_torch_decomposes_prelu(tmp_path: Path) -> None:
    """If this fails after a litert-torch upgrade, it emits PRELU itself: drop the fix."""
    ops = op_counts(stock_convert(PReLUNet(), torch.randn(1, 3, 16, 16), tmp_path / "stock.tflite"))
    assert "PRELU" not in ops
    assert ops["SUB"] == 4  # relu(x) - w * relu(-x) per PReLU (some RELUs fuse into the conv before)


def test_prelu_becomes_one_tflite_prelu_op(tmp_path: Path) -> None:
    model, x = PReLUNet().eval(), torch.randn(1, 3, 16, 16)
    path = fixed_convert(model, x, tmp_path / "fixed.tflite")
    ops = op_counts(path)
    assert ops["PRELU"] == 4
    assert "RELU" not in ops and "SUB" not in ops
    assert_matches_torch(path, model, x)
    assert TfliteRunner(path).delegate_partitions() == 1


@pytest.mark.parametrize("variant", ["dynamic-int8", "int8"])
def test_prelu_stays_in_xnnpack_in_int8(tmp_path: Path, variant: str) -> None:
    """dynamic-int8 keeps PRELU float; static int8 too (ai-edge-quantizer has no PRELU rule), between
    QUANTIZE / DEQUANTIZE, which XNNPACK runs as well: one partition either way."""
    from mobex.targets.tflite import quantize_tflite

    model = PReLUNet().eval()
    rng = np.random.default_rng(0)
    calibration = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(32)]
    base = convert_tflite(model, {"x": torch.from_numpy(calibration[0]["x"])}, tmp_path / "fp32.tflite")
    quantized = quantize_tflite(base, variant, tmp_path / f"{variant}.tflite", calibration=calibration)
    assert op_counts(quantized.path)["PRELU"] == 4
    assert TfliteRunner(quantized.path).delegate_partitions() == 1


# --- conv padding="same" ----------------------------------------------------------------------------


class SamePadding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Conv1d(2, 4, 64, padding="same")  # even kernel: one more pad element at the end
        self.b = nn.Conv1d(4, 3, 5, padding="same", dilation=2)
        self.c = nn.Conv1d(3, 3, 3, padding="valid")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))


def test_stock_litert_torch_has_no_lowering_for_string_padding(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="conv1d.padding"):
        stock_convert(SamePadding(), torch.randn(1, 2, 100), tmp_path / "stock.tflite")


def test_string_padding_converts_and_matches_torch(tmp_path: Path) -> None:
    model, x = SamePadding().eval(), torch.randn(1, 2, 100)
    assert_matches_torch(fixed_convert(model, x, tmp_path / "fixed.tflite"), model, x)


# --- recurrent layers ------------------------------------------------------------------------------


class Recurrent(nn.Module):
    def __init__(self, kind: str, layers: int, bidirectional: bool, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(6, 16, layers, batch_first=batch_first, bidirectional=bidirectional)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, state = self.rnn(x)
        return y, state[0] if isinstance(state, tuple) else state


RECURRENT = [("lstm", 1, False, True), ("lstm", 3, True, False), ("gru", 2, True, True), ("gru", 1, False, False),
             ("rnn", 2, False, True)]  # fmt: skip


@pytest.mark.parametrize(("kind", "layers", "bidirectional", "batch_first"), RECURRENT)
def test_recurrent_layer_matches_torch_in_one_xnnpack_partition(
    tmp_path: Path, kind: str, layers: int, bidirectional: bool, batch_first: bool
) -> None:
    model = Recurrent(kind, layers, bidirectional, batch_first).eval()
    x = torch.randn((1, 12, 6) if batch_first else (12, 1, 6))
    path = fixed_convert(model, x, tmp_path / "fixed.tflite")
    assert_matches_torch(path, model, x)
    assert TfliteRunner(path).delegate_partitions() == 1
    assert "FULLY_CONNECTED" in op_counts(path)


def test_stock_recurrent_layer_leaves_xnnpack(tmp_path: Path) -> None:
    """Stock stacks the 12 step outputs with one 12-input CONCATENATION, which XNNPACK does not take."""
    model, x = Recurrent("lstm", 1, False, True).eval(), torch.randn(1, 12, 6)
    path = stock_convert(model, x, tmp_path / "stock.tflite")
    assert_matches_torch(path, model, x)
    assert TfliteRunner(path).delegate_partitions() > 1


def test_recurrent_layer_is_one_node_through_the_decompositions() -> None:
    """What makes long sequences convert fast: the re-traced graph holds one op, not one per step."""
    from litert_torch import fx_infra

    model, x = Recurrent("lstm", 2, False, True).eval(), torch.randn(1, 40, 6)

    def decomposed_nodes() -> int:
        program = torch.export.export(model, (x,))
        program = fx_infra.safe_run_decompositions(program, fx_infra.decomp.pre_convert_decomp(), can_skip=False)
        return len(program.graph.nodes)

    with tflite_lowering.recurrent_modules_as_custom_ops(model) as patched:
        fixed = decomposed_nodes()
    assert patched == 1
    tflite_lowering.uninstall()
    try:
        stock = decomposed_nodes()
    finally:
        tflite_lowering.install()
    assert fixed < 30 < 40 * 10 < stock  # stock: every step's matmuls, gates and slices


def test_patched_modules_get_their_own_forward_back() -> None:
    model = Recurrent("gru", 1, False, True).eval()
    x = torch.randn(1, 5, 6)
    with torch.no_grad():
        before = model(x)[0]
        with tflite_lowering.recurrent_modules_as_custom_ops(model):
            assert "forward" in vars(model.rnn)
            inside = model(x)[0]  # the custom op's eager kernel is torch's own
        assert "forward" not in vars(model.rnn)
        torch.testing.assert_close(inside, before)


def test_install_and_uninstall_restore_litert_torch_tables() -> None:
    from litert_torch.fx_infra import decomp

    tflite_lowering.install()
    fixed = dict(decomp._pre_lower_decomp)
    tflite_lowering.uninstall()
    stock = dict(decomp._pre_lower_decomp)
    assert stock[torch.ops.aten._prelu_kernel.default] is not fixed[torch.ops.aten._prelu_kernel.default]
    tflite_lowering.install()
    tflite_lowering.install()
    assert dict(decomp._pre_lower_decomp) == fixed


# --- expand ----------------------------------------------------------------------------------------


class GlobalPoolExpand(nn.Module):
    """An ASPP head's image-pool branch: the pooled 1x1 feature expanded back to HxW, next to a conv."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.pool, self.out = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(4, 5, 1), nn.Conv2d(11, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(x.mean((2, 3), keepdim=True)).expand(-1, -1, x.shape[2], x.shape[3])
        return self.out(torch.cat([self.conv(x), pooled], 1))


class GroupedQueryScores(nn.Module):
    """Attention scores with grouped-query attention: 1 key head repeated for 2 query heads (transformers'
    `repeat_kv`: expand + reshape), then q @ k^T as Llama / Qwen2 compute it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.q, self.k = nn.Linear(8, 2 * 4), nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q(x).view(batch, seq, 2, 4).transpose(1, 2)
        k = self.k(x).view(batch, seq, 1, 4).transpose(1, 2)
        k = k[:, :, None].expand(batch, 1, 2, seq, 4).reshape(batch, 2, seq, 4)
        return q @ k.transpose(2, 3)


def test_stock_expand_before_transpose_is_rejected_by_litert(tmp_path: Path) -> None:
    """Stock: BROADCAST_TO from the un-transposed [1, 5, 1, 1] to NHWC [1, 8, 8, 5]. If this fails after a
    litert-torch upgrade, the converter keeps the transpose: drop the fix."""
    path = stock_convert(GlobalPoolExpand(), torch.randn(1, 4, 8, 8), tmp_path / "stock.tflite")
    with pytest.raises(RuntimeError, match="Output shape must be broadcastable"):
        TfliteRunner(path)


def test_stock_grouped_query_keys_are_read_in_the_wrong_order(tmp_path: Path) -> None:
    model, x = GroupedQueryScores().eval(), torch.randn(1, 5, 8)
    runner = TfliteRunner(stock_convert(model, x, tmp_path / "stock.tflite"))
    with torch.no_grad():
        want = model(x).numpy()
    (got,) = runner.run({runner.inputs[0].name: x.numpy()})
    assert got.shape == want.shape
    assert np.abs(got - want).max() > 0.1  # the keys' [seq, dim] transposed by a reshape, not a transpose


@pytest.mark.parametrize("model_cls", [GlobalPoolExpand, GroupedQueryScores])
def test_expand_becomes_broadcast_to_and_matches_torch(tmp_path: Path, model_cls: type[nn.Module]) -> None:
    model = model_cls().eval()
    x = torch.randn(1, 4, 8, 8) if model_cls is GlobalPoolExpand else torch.randn(1, 5, 8)
    path = fixed_convert(model, x, tmp_path / "fixed.tflite")
    assert op_counts(path)["BROADCAST_TO"] == 1
    assert_matches_torch(path, model, x, atol=1e-4)


# --- fold / unfold ------------------------------------------------------------------------------------


class PatchMixer(nn.Module):
    """MobileViT's pattern: unfold a feature map into non-overlapping 2x2 patches, mix them, fold back."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.mix = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = nn.functional.unfold(self.conv(x), kernel_size=2, stride=2)  # [1, 4*2*2, 4*6]
        mixed = self.mix(patches.transpose(1, 2)).transpose(1, 2)
        return nn.functional.fold(mixed, output_size=(8, 12), kernel_size=2, stride=2)


def test_stock_fold_is_a_scatter_litert_cannot_run(tmp_path: Path) -> None:
    path = stock_convert(PatchMixer(), torch.randn(1, 3, 8, 12), tmp_path / "stock.tflite")
    with pytest.raises(RuntimeError, match="stablehlo.scatter"):
        TfliteRunner(path)


def test_non_overlapping_fold_and_unfold_become_transposes_and_match_torch(tmp_path: Path) -> None:
    model, x = PatchMixer().eval(), torch.randn(1, 3, 8, 12)
    path = fixed_convert(model, x, tmp_path / "fixed.tflite")
    ops = op_counts(path)
    assert "STABLEHLO_SCATTER" not in ops and "GATHER_ND" not in ops
    assert_matches_torch(path, model, x, atol=1e-4)
    assert TfliteRunner(path).delegate_partitions() == 1


@pytest.mark.parametrize(("shape", "kernel"), [((2, 3, 8, 12), (2, 3)), ((3, 8, 8), (4, 2)), ((1, 2, 4, 4), (1, 1))])
def test_fold_unfold_decompositions_equal_torch(shape: tuple[int, ...], kernel: tuple[int, int]) -> None:
    """Batched and unbatched, square and not: the reshape-transpose forms give torch's exact values."""
    x = torch.randn(shape)
    patches = nn.functional.unfold(x, kernel, stride=kernel)
    got = tflite_lowering._im2col_as_transpose(x, kernel, [1, 1], [0, 0], kernel)
    torch.testing.assert_close(got, patches, rtol=0, atol=0)
    folded = nn.functional.fold(patches * 3, shape[-2:], kernel, stride=kernel)
    got = tflite_lowering._col2im_as_transpose(patches * 3, list(shape[-2:]), kernel, [1, 1], [0, 0], kernel)
    torch.testing.assert_close(got, folded, rtol=0, atol=0)


def test_overlapping_fold_keeps_torchs_decomposition() -> None:
    """Stride 1 (overlapping) and a 5x5 map cut into 2x2 patches (cropped): not a plain transpose."""
    overlapping, cropped = torch.randn(1, 12, 9), torch.randn(1, 3, 5, 5)
    assert tflite_lowering._col2im_as_transpose(overlapping, [4, 4], [2, 2], [1, 1], [0, 0], [1, 1]) is NotImplemented
    assert tflite_lowering._im2col_as_transpose(cropped, [2, 2], [1, 1], [0, 0], [2, 2]) is NotImplemented
