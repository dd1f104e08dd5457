"""Op-level checks of the MIL reference interpreter.

Each case converts a tiny torch module with coremltools (iOS16, FLOAT32 unless stated), saves the
package, runs it through MilReferenceRunner and compares with torch. Ops that torch conversions do
not emit (pad_type same/same_lower, gelu sigmoid approximation, slice masks, ...) are built directly
with coremltools' MIL Builder and compared with numpy/torch formulas.
"""

from __future__ import annotations

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mobex.runtime.mil import MilReferenceRunner, UnsupportedOpError, supported_ops  # noqa: E402

FP32_TOL = 1e-4


class Fn(nn.Module):
    """Wrap a function (plus optional submodules) as a module for tracing."""

    def __init__(self, fn, **mods):
        super().__init__()
        self.fn = fn
        for k, v in mods.items():
            setattr(self, k, v)

    def forward(self, *xs):
        return self.fn(self, *xs)


def r(*shape, lo=-2.0, hi=2.0):
    return torch.empty(*shape).uniform_(lo, hi)


# --------------------------------------------------------------------------- conv

CONV_CASES = {
    "pad1": lambda: nn.Conv2d(4, 6, 3, padding=1),
    "valid_stride2": lambda: nn.Conv2d(4, 6, 3, stride=2),
    "pad_asym_kernel": lambda: nn.Conv2d(4, 6, (3, 5), stride=(2, 1), padding=(1, 2)),
    "same_even_kernel_dilated": lambda: nn.Conv2d(4, 6, 4, padding="same", dilation=2),
    "groups2": lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
    "depthwise_stride2": lambda: nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=4, bias=False),
    "dilated": lambda: nn.Conv2d(4, 6, 3, dilation=2, padding=2),
}


@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d(case, mil):
    torch.manual_seed(1)
    mil.check_torch(CONV_CASES[case](), [r(1, 4, 11, 10)])


def test_conv1d_and_conv_transpose(mil):
    torch.manual_seed(2)
    m = Fn(
        lambda s, x, y: (s.c1(x), s.ct(y), s.ct2(y)),
        c1=nn.Conv1d(3, 5, 3, stride=2, padding=1),
        ct=nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
        ct2=nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2),
    )
    mil.check_torch(m, [r(1, 3, 17), r(1, 4, 5, 6)])


def _explicit_same_conv(x, w, stride, dilation, lower):
    """TensorFlow's SAME rule, written out independently of the interpreter."""
    pads = []
    for i, k, s, d in zip(x.shape[2:], w.shape[2:], stride, dilation, strict=True):
        out = -(-i // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - i, 0)
        small, big = total // 2, total - total // 2
        pads.append((big, small) if lower else (small, big))
    xt = F.pad(torch.from_numpy(x), [pads[1][0], pads[1][1], pads[0][0], pads[0][1]])
    return F.conv2d(xt, torch.from_numpy(w), stride=stride, dilation=dilation).numpy()


@pytest.mark.parametrize("pad_type", ["same", "same_lower"])
def test_conv_pad_type_same(pad_type, mil):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 3, 4, 3)).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 9, 8))], opset_version=ct.target.iOS16)
    def prog(x):
        a = mb.conv(x=x, weight=w, pad_type=pad_type, strides=[2, 2])
        b = mb.conv(x=x, weight=w, pad_type=pad_type, dilations=[2, 1])
        return a, b

    runner = MilReferenceRunner(mil.convert_program(prog))
    x = rng.standard_normal((1, 3, 9, 8)).astype(np.float32)
    a, b = runner.run({"x": x})
    lower = pad_type == "same_lower"
    np.testing.assert_allclose(a, _explicit_same_conv(x, w, (2, 2), (1, 1), lower), atol=FP32_TOL)
    np.testing.assert_allclose(b, _explicit_same_conv(x, w, (1, 1), (2, 1), lower), atol=FP32_TOL)


def _conv_same_vjp(x: np.ndarray, w: np.ndarray, stride: int, out_hw: tuple[int, int]) -> np.ndarray:
    """conv_transpose with SAME padding, defined as the gradient of a SAME conv (TensorFlow's rule)."""
    pads = []
    for size in out_hw:
        out = -(-size // stride)
        total = max((out - 1) * stride + w.shape[2] - size, 0)
        pads.append((total // 2, total - total // 2))

    def conv(z):
        return F.conv2d(F.pad(z, [pads[1][0], pads[1][1], pads[0][0], pads[0][1]]), torch.from_numpy(w), stride=stride)

    z = torch.zeros(1, w.shape[1], *out_hw)
    return torch.autograd.functional.vjp(conv, z, torch.from_numpy(x))[1].numpy()


def test_conv_transpose_pad_types(mil):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)  # [C_in, C_out, K, K]

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4, 5, 6))], opset_version=ct.target.iOS16)
    def prog(x):
        same = mb.conv_transpose(x=x, weight=w, pad_type="same", strides=[2, 2])
        custom = mb.conv_transpose(x=x, weight=w, pad_type="custom", pad=[1, 0, 0, 2], strides=[2, 2])
        return same, custom

    x = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    same, custom = _builder_runner(prog, mil).run({"x": x})
    np.testing.assert_allclose(same, _conv_same_vjp(x, w, 2, (10, 12)), atol=FP32_TOL)
    full = F.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), stride=2).numpy()  # 11 x 13
    np.testing.assert_allclose(custom, full[:, :, 1:, 0:-2], atol=FP32_TOL)


# --------------------------------------------------------------------------- pools

POOL_CASES = {
    "max_pad": lambda: nn.MaxPool2d(3, 2, 1),
    "max_ceil": lambda: nn.MaxPool2d(2, 2, ceil_mode=True),
    "max_ceil_pad": lambda: nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    "avg_include_pad": lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=True),
    "avg_exclude_pad": lambda: nn.AvgPool2d(3, 2, 1, count_include_pad=False),
    "avg_ceil": lambda: nn.AvgPool2d(2, 2, ceil_mode=True),
    "avg_ceil_pad": lambda: nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    "adaptive_avg": lambda: nn.AdaptiveAvgPool2d(1),
    "adaptive_max": lambda: nn.AdaptiveMaxPool2d(1),
}


@pytest.mark.parametrize("case", sorted(POOL_CASES))
def test_pools(case, mil):
    torch.manual_seed(3)
    mil.check_torch(POOL_CASES[case](), [r(1, 3, 9, 7)])


def test_pool1d(mil):
    m = Fn(lambda s, x: (F.max_pool1d(x, 3, 2, 1), F.avg_pool1d(x, 2, 2, ceil_mode=True)))
    mil.check_torch(m, [r(1, 3, 11)])


# --------------------------------------------------------------------------- reductions, linear algebra


def test_reductions(mil):
    def fn(s, x):
        return (
            x.mean(dim=(1, 3)),
            x.sum(dim=-1, keepdim=True),
            x.amax(dim=2),
            x.amin(dim=(0, 1)),
            torch.linalg.vector_norm(x, ord=2, dim=-1),
            x.argmax(dim=1),
            torch.logsumexp(x, dim=2),
        )

    mil.check_torch(Fn(fn), [r(2, 3, 4, 5, lo=0.5, hi=1.5)])


def test_linear_matmul_einsum(mil):
    torch.manual_seed(4)

    def fn(s, x, y, z):
        return (
            s.lin(x),
            s.nobias(x),
            torch.matmul(x, y),  # batch broadcast [2,1,...] x [3,...]
            torch.matmul(x, z.transpose(-1, -2)),
            torch.bmm(x[0], x[0].transpose(1, 2)),
            torch.einsum("abij,abkj->abik", x, x),
        )

    m = Fn(fn, lin=nn.Linear(6, 5), nobias=nn.Linear(6, 4, bias=False))
    mil.check_torch(m, [r(2, 1, 4, 6), r(3, 6, 7), r(2, 3, 5, 6)])


# --------------------------------------------------------------------------- normalisation, softmax


def test_norms(mil):
    torch.manual_seed(5)
    bn = nn.BatchNorm2d(4).eval()
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 2)

    def fn(s, x, t):
        return (
            s.bn(x),
            s.ln(t),
            nn.functional.layer_norm(x, [4, 5, 6]),  # x.shape[1:] trips coremltools 9 on torch 2.13 (int())
            F.normalize(t, dim=-1),
            torch.softmax(x, dim=1),
            F.log_softmax(t, dim=-1),
        )

    # InstanceNorm2d / GroupNorm fail to convert with coremltools 9 on torch 2.13 ("No matching select
    # or slice"); instance_norm is checked with the Builder below.
    m = Fn(fn, bn=bn, ln=nn.LayerNorm(6))
    mil.check_torch(m, [r(2, 4, 5, 6), r(2, 3, 6)])


# --------------------------------------------------------------------------- activations, elementwise


def test_activations(mil):
    torch.manual_seed(6)

    def fn(s, x):
        return (
            F.gelu(x),
            F.gelu(x, approximate="tanh"),
            F.relu(x),
            F.relu6(x * 4),
            torch.sigmoid(x),
            torch.tanh(x),
            F.silu(x),
            F.hardswish(x * 3),
            F.hardsigmoid(x * 3),
            F.leaky_relu(x, 0.1),
            F.elu(x),
            F.softplus(x),
            s.prelu(x),
            torch.erf(x),
            F.hardtanh(x, -0.5, 0.7),
        )

    prelu = nn.PReLU(4)
    prelu.weight.data = torch.tensor([0.1, 0.2, 0.3, 0.05])  # distinct slopes: a real prelu
    mil.check_torch(Fn(fn, prelu=prelu), [r(2, 4, 3, 5)])


def test_unary_math(mil):
    def fn(s, x):
        return (
            torch.exp(x),
            torch.log(x),
            torch.sqrt(x),
            torch.rsqrt(x),
            x.pow(3),
            torch.pow(x, 0.5),
            torch.abs(x - 1),
            torch.floor(x * 3),
            torch.ceil(x * 3),
            torch.round(x * 3),
            torch.sin(x),
            torch.cos(x),
            torch.sign(x - 1),
        )

    mil.check_torch(Fn(fn), [r(3, 7, lo=0.1, hi=2.0)])


def test_reciprocal_keeps_the_converted_epsilon(mil):
    """torch.reciprocal converts to MIL `inverse`, whose default epsilon (1e-4) is added to x: the
    interpreter reports what the program computes, 1/(x+1e-4), not torch's 1/x."""
    m = Fn(lambda s, x: torch.reciprocal(x))
    x = r(3, 7, lo=0.5, hi=2.0)
    runner = MilReferenceRunner(mil.convert_torch(m, [x]))
    assert runner.op_counts().get("inverse") == 1
    got = runner.run({"x0": x.numpy()})[0]
    np.testing.assert_allclose(got, 1 / (x.numpy() + 1e-4), rtol=1e-6)
    assert np.max(np.abs(got - 1 / x.numpy())) > 1e-5


def test_binary_broadcast_compare_select(mil):
    def fn(s, x, y):
        return (
            x + y,
            x - y,
            x * y,
            x / (y + 3),
            torch.floor_divide(x, y + 3),
            torch.remainder(x, y + 3),
            torch.maximum(x, y),
            torch.minimum(x, y),
            torch.where(x > y, x, y * 2),
            (x >= y).float(),
            (x == x.round()).float() + (x != y).float() + (x < y).float() + (x <= y).float(),
            torch.logical_and(x > 0, y > 0).float() + torch.logical_or(x > 0, y < 0).float(),
            torch.logical_xor(x > 0, y > 0).float() + torch.logical_not(x > 0).float(),
            torch.clamp(x, -0.5, 0.5),
            x.masked_fill(y > 0.5, -7.0),
        )

    mil.check_torch(Fn(fn), [r(2, 3, 4), r(3, 1)])


# --------------------------------------------------------------------------- tensor ops


def test_shape_ops(mil):
    def fn(s, x, y):
        return (
            x.reshape(2, -1),
            x.permute(0, 3, 1, 2),
            torch.cat([x, x * 2], dim=2),
            *torch.split(x, [1, 3], dim=2),
            *torch.chunk(y, 3, dim=-1),
            x[:, :, :1].squeeze(2),
            y.unsqueeze(1).unsqueeze(-1),
            x.flatten(1),
            torch.stack([y, y + 1], dim=1),
            x.transpose(1, 3).contiguous().view(2, -1, 3),
            y.expand(3, 2, 9),
            y.repeat(2, 1, 3),
            torch.flip(x, dims=[1, 3]),
        )

    mil.check_torch(Fn(fn), [r(2, 3, 4, 5), r(2, 9)])


def test_slicing(mil):
    def fn(s, x):
        return (
            x[:, 1],  # squeeze mask
            x[:, -2:, ::2],  # negative begin, stride
            x[..., 1:-1],
            x[0, :, 3, 1:4],
            x[:, :, 1:5:3, :],
            x.narrow(3, 2, 3),
            x[:, :, -1],
        )

    mil.check_torch(Fn(fn), [r(2, 4, 6, 5)])


def test_gather_embedding_pad_cumsum(mil):
    torch.manual_seed(7)

    def fn(s, x, idx):
        return (
            s.emb(idx),
            torch.index_select(x, 1, idx[0] % 3),
            torch.gather(x, 2, (idx[:, None, :4] % 5).expand(2, 3, 4)),
            F.pad(x, (1, 2)),
            F.pad(x[None], (2, 1, 0, 1), mode="reflect"),
            F.pad(x[None], (1, 1, 2, 0), mode="replicate"),
            F.pad(x, (0, 0, 1, 1), value=3.5),
            torch.cumsum(x, dim=2),
            torch.topk(x, 2, dim=-1).values,
            torch.topk(x, 3, dim=1, largest=False).indices.float(),
        )

    m = Fn(fn, emb=nn.Embedding(10, 4))
    idx = torch.tensor([[1, 3, 5, 7, 9, 0], [2, 4, 6, 8, 9, 1]])
    mil.check_torch(m, [r(2, 3, 5), idx], dtypes=[np.float32, np.int32])


def test_resize_and_shuffle(mil):
    def fn(s, x):
        return (
            F.interpolate(x, scale_factor=2, mode="nearest"),
            F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False),
            F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True),
            F.interpolate(x, size=(7, 9), mode="bilinear", align_corners=False),
            F.interpolate(x, size=(8, 12), mode="nearest"),
            F.pixel_shuffle(torch.cat([x, x * 2, x * 3, x * 4], 1), 2),
            F.pixel_unshuffle(x, 2),
        )

    mil.check_torch(Fn(fn), [r(1, 2, 4, 6)])


def test_int_cast_paths(mil):
    """Int inputs, int arithmetic and casts back to float (what embeddings/masks produce)."""

    def fn(s, ids, x):
        mask = (ids > 3).to(torch.float32)
        return x * mask, (ids * 2 + 1).to(torch.float32), (x * 10).to(torch.int32).to(torch.float32)

    ids = torch.tensor([[1, 5, 3, 9]])
    mil.check_torch(Fn(fn), [ids, r(1, 4)], dtypes=[np.int32, np.float32])


# --------------------------------------------------------------------------- fp16 programs


def test_fp16_conv_pool_act(mil):
    torch.manual_seed(8)
    m = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.Hardswish(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8),
        nn.ReLU6(),
        nn.AvgPool2d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 5),
        nn.Softmax(dim=-1),
    ).eval()
    runner = mil.check_torch(m, [r(1, 3, 16, 16)], fp16=True)
    assert runner.computes_in_fp16


def test_fp16_rounds_every_op(mil):
    """An fp16 program's intermediates are fp16: x + 1e-4 is lost in fp16 where fp32 keeps it."""
    m = Fn(lambda s, x: (x + 1e-4) - x)
    x = torch.ones(1, 8)
    path = mil.convert_torch(m, [x], fp16=True)
    runner = MilReferenceRunner(path)
    out = runner.run({"x0": x.numpy()})[0]
    assert runner.outputs[0].dtype == "float16" and out.dtype == np.float16
    np.testing.assert_array_equal(out, 0.0)
    path32 = mil.convert_torch(m, [x])
    out32 = MilReferenceRunner(path32).run({"x0": x.numpy()})[0]
    assert out32.dtype == np.float32 and np.all(out32 > 5e-5)


def test_fp16_io(mil):
    """fp16 inputs (iOS16 default for fp16 programs): the feed is rounded to fp16, output is fp16."""
    m = Fn(lambda s, x: torch.tanh(x) * 3)
    x = r(2, 5)
    runner = mil.check_torch(m, [x], fp16=True, io_fp32=False)
    assert runner.inputs[0].dtype == "float16"


# --------------------------------------------------------------------------- Builder-only ops


def _builder_runner(prog, mil, **kw) -> MilReferenceRunner:
    runner = MilReferenceRunner(mil.convert_program(prog, **kw))
    assert runner.unsupported_ops() == []
    return runner


def test_builder_gelu_modes_and_misc_activations(mil):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4))], opset_version=ct.target.iOS16)
    def prog(x):
        return (
            mb.gelu(x=x, mode="SIGMOID_APPROXIMATION"),
            mb.clamped_relu(x=x, alpha=0.2, beta=1.0),
            mb.scaled_tanh(x=x, alpha=2.0, beta=0.5),
            mb.softsign(x=x),
            mb.thresholded_relu(x=x, alpha=0.3),
            mb.linear_activation(x=x, alpha=2.0, beta=-1.0),
            mb.inverse(x=x, epsilon=0.5),
            mb.threshold(x=x, alpha=0.1),
        )

    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    got = _builder_runner(prog, mil).run({"x": x})
    want = [
        x / (1 + np.exp(-1.702 * x)),
        np.minimum(np.maximum(x, 0), 1.0) + np.minimum(np.minimum(x, 0) * 0.2, 1.0),
        2.0 * np.tanh(0.5 * x),
        x / (1 + np.abs(x)),
        np.where(x < 0.3, 0, x),
        2 * x - 1,
        1 / (x + 0.5),
        np.maximum(x, 0.1),
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=FP32_TOL, rtol=1e-5)


def test_builder_slice_masks_and_dynamic_shapes(mil):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 6, 5))], opset_version=ct.target.iOS17)
    def prog(x):
        sliced = mb.slice_by_index(
            x=x,
            begin=[1, 5, 0],
            end=[0, 0, 4],
            stride=[1, -2, 1],
            begin_mask=[False, False, True],
            end_mask=[True, True, False],
            squeeze_mask=[False, False, False],
        )
        squeezed = mb.slice_by_index(x=x, begin=[2, 0, -1], end=[3, 6, 0], squeeze_mask=[True, False, True])
        by_size = mb.slice_by_size(x=x, begin=[1, 2, 0], size=[2, -1, 3])
        ramp = mb.range_1d(start=0.0, end=mb.real_div(x=mb.reduce_max(x=x), y=20.0), step=1.5)  # data-dependent
        banded = mb.band_part(x=x, lower=1, upper=0)
        flat = mb.reshape(x=x, shape=[1, 0, -1, 0])  # iOS17: each 0 copies the dim right-aligned
        gathered = mb.gather(x=x, indices=np.array([[3, 0], [1, 1]], dtype=np.int32), axis=1)
        along = mb.gather_along_axis(x=x, indices=np.zeros((4, 2, 5), dtype=np.int32) + 2, axis=1)
        tiled = mb.tile(x=x, reps=[1, 2, 1])
        return sliced, squeezed, by_size, ramp, banded, flat, gathered, along, tiled

    x = np.arange(120, dtype=np.float32).reshape(4, 6, 5)
    got = _builder_runner(prog, mil, target=ct.target.iOS17).run({"x": x})
    i, j = np.arange(6)[:, None], np.arange(5)[None, :]
    want = [
        x[1:, 5::-2, :4],
        x[2, :, -1],
        x[1:3, 2:, 0:3],
        np.arange(0.0, 119 / 20, 1.5, dtype=np.float32),
        np.where((i - j <= 1) & (j - i <= 0), x, 0),
        x.reshape(1, 4, 6, 5),
        np.take(x, [[3, 0], [1, 1]], axis=1),
        np.take_along_axis(x, np.zeros((4, 2, 5), dtype=np.int64) + 2, axis=1),
        np.tile(x, (1, 2, 1)),
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=FP32_TOL)


def test_builder_resize_and_upsample_modes(mil):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 1, 1, 2))], opset_version=ct.target.iOS16)
    def prog(x):
        outs = [
            mb.resize_bilinear(x=x, target_size_height=1, target_size_width=5, sampling_mode=mode)
            for mode in ("STRICT_ALIGN_CORNERS", "ALIGN_CORNERS", "DEFAULT", "OFFSET_CORNERS", "UNALIGN_CORNERS")
        ]
        outs.append(mb.upsample_nearest_neighbor(x=x, scale_factor_height=2, scale_factor_width=3))
        outs.append(mb.resize_nearest_neighbor(x=x, target_size_height=3, target_size_width=4))
        return tuple(outs)

    x = np.array([[[[0.0, 1.0]]]], dtype=np.float32)
    got = _builder_runner(prog, mil).run({"x": x})
    # The grids of coremltools' resize_bilinear docstring, for Xin=2, Xout=5.
    grids = {
        0: [0.0, 0.25, 0.5, 0.75, 1.0],
        1: [0.0, 0.25, 0.5, 0.75, 1.0],
        2: [0.0, 0.4, 0.8, 1.0, 1.0],
        3: [0.1, 0.3, 0.5, 0.7, 0.9],
        4: [0.0, 0.1, 0.5, 0.9, 1.0],
    }
    for k, grid in grids.items():
        np.testing.assert_allclose(got[k][0, 0, 0], grid, atol=1e-6)  # x holds 0..1: values are the grid
    np.testing.assert_array_equal(got[5][0, 0], np.repeat(np.repeat(x[0, 0], 2, 0), 3, 1))
    np.testing.assert_array_equal(got[6][0, 0], [[0, 0, 1, 1]] * 3)


def test_builder_scatter_and_misc(mil):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(4, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        upd = mb.mul(x=mb.slice_by_size(x=x, begin=[0, 0], size=[2, 3]), y=10.0)
        return (
            mb.scatter(data=x, indices=np.array([3, 1], dtype=np.int32), updates=upd, axis=0, mode="update"),
            mb.scatter(data=x, indices=np.array([1, 1], dtype=np.int32), updates=upd, axis=0, mode="add"),
            mb.scatter_nd(
                data=x,
                indices=np.array([[0, 2], [3, 0]], dtype=np.int32),
                updates=np.array([7.0, 8.0], np.float32),
                mode="update",
            ),
            mb.cumsum(x=x, axis=0, exclusive=True, reverse=True),
            mb.argsort(x=x, axis=1, ascending=True),
            mb.reduce_argmin(x=x, axis=0, keep_dims=True),
            mb.space_to_depth(x=mb.reshape(x=x, shape=[1, 1, 4, 3]), block_size=1),
            mb.l2_norm(x=mb.reshape(x=x, shape=[1, 1, 4, 3]), epsilon=1e-6),
        )

    x = np.arange(12, dtype=np.float32).reshape(4, 3) - 5
    got = _builder_runner(prog, mil).run({"x": x})
    s_upd = x.copy()
    s_upd[[3, 1]] = x[:2] * 10
    s_add = x.copy()
    s_add[1] += x[0] * 10 + x[1] * 10
    s_nd = x.copy()
    s_nd[0, 2], s_nd[3, 0] = 7, 8
    rev = np.flip(np.cumsum(np.flip(x, 0), 0), 0)
    excl = np.concatenate([rev[1:], np.zeros((1, 3), np.float32)], 0)
    want = [
        s_upd,
        s_add,
        s_nd,
        excl,
        np.argsort(x, axis=1),
        np.argmin(x, axis=0)[None],
        x.reshape(1, 1, 4, 3),
        x.reshape(1, 1, 4, 3) / np.sqrt((x**2).sum() + 1e-6),
    ]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, atol=FP32_TOL)


def _depth_to_space_dcr(x: np.ndarray, b: int) -> np.ndarray:
    """TensorFlow's depth_to_space, element by element."""
    n, c, h, w = x.shape
    co = c // (b * b)
    out = np.empty((n, co, h * b, w * b), x.dtype)
    for i in range(b):
        for j in range(b):
            out[:, :, i::b, j::b] = x[:, (i * b + j) * co : (i * b + j + 1) * co]
    return out


def test_builder_norms_reductions_and_rearrangements(mil):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(3)
    gamma, beta = rng.uniform(0.5, 1.5, 4).astype(np.float32), rng.uniform(-0.5, 0.5, 4).astype(np.float32)
    alpha = rng.uniform(0.05, 0.3, 4).astype(np.float32)

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 4, 6, 5))], opset_version=ct.target.iOS17)
    def prog(x):
        return (
            mb.instance_norm(x=x, gamma=gamma, beta=beta, epsilon=1e-5),
            mb.reduce_prod(x=x, axes=[1], keep_dims=False),
            mb.reduce_l1_norm(x=x, axes=[-1], keep_dims=True),
            mb.reduce_sum_square(x=x, axes=[2, 3]),
            mb.reduce_log_sum(x=mb.abs(x=x), axes=[1]),
            mb.local_response_norm(x=x, size=3, alpha=1e-2, beta=0.75, k=1.0),
            mb.depth_to_space(x=x, block_size=2),
            mb.prelu(x=x, alpha=alpha),
            mb.softplus_parametric(x=x, alpha=alpha, beta=gamma),
            mb.mod(x=x, y=0.7),
            mb.square(x=x),
            mb.einsum(values=(x, mb.transpose(x=x, perm=[0, 3, 2, 1])), equation="nchw,nwhu->nchu"),
            mb.flatten2d(x=x, axis=2),
            mb.gather_nd(x=x, indices=np.array([[0, 1], [1, 3]], dtype=np.int32)),
            mb.sliding_windows(x=x, axis=3, size=3, stride=2),
            mb.l2_pool(x=x, kernel_sizes=[2, 2], strides=[2, 1], pad_type="valid"),
            mb.resize(
                x=x, shape=np.array([9, 7], np.int32), resized_dims=np.uint32(2), sampling_mode="UNALIGN_CORNERS"
            ),
        )

    x = rng.uniform(-1.5, 1.5, (2, 4, 6, 5)).astype(np.float32)
    got = _builder_runner(prog, mil, target=ct.target.iOS17).run({"x": x})
    tx = torch.from_numpy(x)
    windows = np.stack([x[..., i : i + 3] for i in (0, 2)], axis=3)
    want = [
        F.instance_norm(tx, weight=torch.from_numpy(gamma), bias=torch.from_numpy(beta), eps=1e-5).numpy(),
        np.prod(x, axis=1),
        np.abs(x).sum(-1, keepdims=True),
        (x**2).sum((2, 3)),
        np.log(np.abs(x).sum(1)),
        F.local_response_norm(tx, 3, alpha=1e-2, beta=0.75, k=1.0).numpy(),
        _depth_to_space_dcr(x, 2),
        np.where(x > 0, x, x * alpha[None, :, None, None]),
        alpha[None, :, None, None] * np.log1p(np.exp(x * gamma[None, :, None, None])),
        np.mod(x, 0.7),
        x**2,
        np.einsum("nchw,nwhu->nchu", x, x.transpose(0, 3, 2, 1)),
        x.reshape(8, 30),
        np.stack([x[0, 1], x[1, 3]]),
        windows,
        np.sqrt(F.avg_pool2d(tx**2, 2, (2, 1)).numpy() * 4),
        F.interpolate(tx, size=(9, 7), mode="bilinear", align_corners=False).numpy(),
    ]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        np.testing.assert_allclose(g, w, atol=FP32_TOL, rtol=1e-4, err_msg=f"output {i}")


def _tf_space_to_batch(x: np.ndarray, block: tuple[int, int], pads: list[list[int]]) -> np.ndarray:
    """TensorFlow's space_to_batch_nd (NHWC), element by element, on a channel-first tensor."""
    x = np.pad(x, [(0, 0), (0, 0), tuple(pads[0]), tuple(pads[1])])
    n, c, h, w = x.shape
    bh, bw = block
    out = np.empty((n * bh * bw, c, h // bh, w // bw), x.dtype)
    for i in range(bh):
        for j in range(bw):
            out[(i * bw + j) * n : (i * bw + j + 1) * n] = x[:, :, i::bh, j::bw]
    return out


def test_builder_reverse_sequence_space_batch_and_nms(mil):
    from coremltools.converters.mil import Builder as mb

    rng = np.random.default_rng(4)
    lengths = np.array([3, 0, 5, 1], np.int32)

    @mb.program(
        input_specs=[mb.TensorSpec(shape=(5, 4, 3)), mb.TensorSpec(shape=(2, 3, 5, 6)), mb.TensorSpec(shape=(1, 4, 4))],
        opset_version=ct.target.iOS16,
    )
    def prog(seq, img, boxes):
        scores = np.array([[[0.1], [0.9], [0.8], [0.7]]], np.float32)
        return (
            mb.reverse_sequence(x=seq, lengths=lengths, seq_axis=0, batch_axis=1),
            mb.space_to_batch(x=img, block_shape=[2, 3], paddings=[[1, 0], [0, 0]]),
            mb.batch_to_space(
                x=mb.space_to_batch(x=img, block_shape=[2, 3], paddings=[[1, 0], [0, 0]]),
                block_shape=[2, 3], crops=[[1, 0], [0, 0]],
            ),
            *mb.non_maximum_suppression(
                boxes=boxes, scores=scores, iou_threshold=0.3, score_threshold=0.2, max_boxes=3,
            ),
        )  # fmt: skip

    seq = rng.uniform(-1, 1, (5, 4, 3)).astype(np.float32)
    img = rng.uniform(-1, 1, (2, 3, 5, 6)).astype(np.float32)
    # centre-size boxes: 1 and 2 overlap by IoU 0.6 (2 suppressed), 3 is apart; 0 scores below 0.2
    boxes = np.array([[[0, 0, 2, 2], [5, 5, 2, 2], [5.5, 5, 2, 2], [9, 9, 1, 1]]], np.float32)
    got = _builder_runner(prog, mil, target=ct.target.iOS16).run({"seq": seq, "img": img, "boxes": boxes})
    want_seq = seq.copy()
    for b, n in enumerate(lengths):
        want_seq[:n, b] = seq[:n, b][::-1]
    np.testing.assert_array_equal(got[0], want_seq)
    np.testing.assert_array_equal(got[1], _tf_space_to_batch(img, (2, 3), [[1, 0], [0, 0]]))
    np.testing.assert_array_equal(got[2], img)
    out_boxes, out_scores, out_idx, out_n = got[3:]
    np.testing.assert_array_equal(out_idx, [[1, 3, -1]])
    np.testing.assert_array_equal(out_n, [2])
    np.testing.assert_array_equal(out_boxes[0, :2], boxes[0, [1, 3]])
    np.testing.assert_allclose(out_scores[0, :, 0], [0.9, 0.7, 0.0])


def test_fp16_parameters_next_to_fp32_input_load_and_run(mil):
    """batch_norm with fp16 statistics and the default (fp32) epsilon, converted at fp32: coremltools
    writes the program (x becomes fp32, the statistics stay fp16) and then its own loader refuses it;
    the interpreter loads and runs it."""
    from coremltools.converters.mil import Builder as mb

    x = np.random.default_rng(5).uniform(-2, 2, (1, 3, 2, 2)).astype(np.float32)
    mean, var = np.array([1.0, -2.0, 0.5], np.float16), np.array([2.0, 0.5, 1.0], np.float16)

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 3, 2, 2), dtype=ct.converters.mil.mil.types.fp16)])
    def prog(x):
        return mb.batch_norm(x=x, mean=mean, variance=var)

    model = ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS15,
                       compute_precision=ct.precision.FLOAT32)  # fmt: skip
    path = mil.path()
    model.save(str(path))
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load

    from mobex.runtime.mil.program import load_pymil_program

    spec = ct.utils.load_spec(str(path))
    with pytest.raises(ValueError, match="must have the same data type"):
        milproto_load(spec, spec.specificationVersion, str(path / "Data/com.apple.CoreML/weights"))
    loaded, _, error = load_pymil_program(path)
    assert error is None and loaded is not None
    (got,) = MilReferenceRunner(path).run({"x": x})
    m, v = mean.astype(np.float32)[None, :, None, None], var.astype(np.float32)[None, :, None, None]
    np.testing.assert_allclose(got, (x - m) / np.sqrt(v + 1e-5), atol=1e-4)


def test_builder_ios18_slice_update_and_sdpa(mil):
    from coremltools.converters.mil import Builder as mb

    @mb.program(
        input_specs=[
            mb.TensorSpec(shape=(1, 2, 5, 4)),
            mb.TensorSpec(shape=(1, 2, 5, 5), dtype=ct.converters.mil.mil.types.bool),
        ],
        opset_version=ct.target.iOS18,
    )
    def prog(q, keep):
        upd = mb.slice_update(
            x=q,
            update=mb.mul(x=mb.slice_by_index(x=q, begin=[0, 0, 1, 0], end=[1, 2, 3, 4]), y=-1.0),
            begin=[0, 0, 3, 0],
            end=[1, 2, 5, 4],
        )
        return upd, mb.scaled_dot_product_attention(query=q, key=upd, value=q, attn_mask=keep)

    rng = np.random.default_rng(4)
    q = rng.standard_normal((1, 2, 5, 4)).astype(np.float32)
    keep = np.tril(np.ones((5, 5), bool))[None, None].repeat(2, 1)
    got = _builder_runner(prog, mil, target=ct.target.iOS18).run({"q": q, "keep": keep})
    upd = q.copy()
    upd[:, :, 3:5] = -q[:, :, 1:3]
    want = F.scaled_dot_product_attention(
        torch.from_numpy(q), torch.from_numpy(upd), torch.from_numpy(q), attn_mask=torch.from_numpy(keep)
    ).numpy()
    np.testing.assert_allclose(got[0], upd, atol=FP32_TOL)
    np.testing.assert_allclose(got[1], want, atol=FP32_TOL)


def test_builder_quantize_one_hot_scatter_along_axis(mil):
    from coremltools.converters.mil import Builder as mb

    @mb.program(input_specs=[mb.TensorSpec(shape=(3, 4))], opset_version=ct.target.iOS17)
    def prog(x):
        q = mb.quantize(input=x, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8")
        deq = mb.dequantize(input=q, scale=np.float32(0.05), zero_point=np.int8(3))
        idx = mb.cast(x=mb.reduce_argmax(x=x, axis=1), dtype="int32")
        hot = mb.one_hot(indices=idx, one_hot_vector_size=5, axis=-1, on_value=2.0, off_value=-1.0)
        scattered = mb.scatter_along_axis(
            data=x,
            indices=np.array([[1], [0], [3]], np.int32),
            updates=mb.slice_by_size(x=x, begin=[0, 0], size=[3, 1]),
            axis=1,
            mode="update",
        )
        return deq, hot, scattered

    x = np.random.default_rng(5).uniform(-3, 3, (3, 4)).astype(np.float32)
    got = _builder_runner(prog, mil, target=ct.target.iOS17).run({"x": x})
    deq = (np.clip(np.round(x / 0.05) + 3, -128, 127) - 3) * 0.05
    hot = np.where(np.arange(5)[None] == x.argmax(1)[:, None], 2.0, -1.0)
    scattered = x.copy()
    for row, col in enumerate([1, 0, 3]):
        scattered[row, col] = x[row, 0]
    for g, w in zip(got, [deq, hot, scattered], strict=True):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_flexible_input_shape(mil):
    """A RangeDim input: shapes are only known at run time (shape/fill-like ops are not folded)."""
    import warnings

    warnings.filterwarnings("ignore")

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(8, 8)

        def forward(self, x):
            h = self.lin(x)
            return torch.softmax(h - h.mean(dim=1, keepdim=True), dim=1).flatten(1) + torch.ones_like(h).flatten(1)

    m = M().eval()
    traced = torch.jit.trace(m, (r(1, 5, 8),))
    model = ct.convert(
        traced,
        inputs=[ct.TensorType(name="x", shape=(1, ct.RangeDim(1, 32, default=5), 8))],
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT32,
    )
    path = mil.path()
    model.save(str(path))
    runner = MilReferenceRunner(path)
    assert runner.inputs[0].shape == (1, -1, 8)
    for n in (3, 11):
        x = r(1, n, 8)
        got = runner.run({"x": x.numpy()})[0]
        with torch.no_grad():
            np.testing.assert_allclose(got, m(x).numpy(), atol=FP32_TOL)


# --------------------------------------------------------------------------- unsupported ops, bad feeds


def test_unsupported_op_is_reported_and_refuses_to_run(mil, monkeypatch):
    """An op coremltools knows but the interpreter has no kernel for (one is removed for the test)."""
    from coremltools.converters.mil import Builder as mb

    from mobex.runtime.mil.ops_common import KERNELS

    monkeypatch.delitem(KERNELS, "random_uniform")
    assert "random_uniform" not in supported_ops()

    @mb.program(input_specs=[mb.TensorSpec(shape=(2, 3))], opset_version=ct.target.iOS16)
    def prog(x):
        noise = mb.random_uniform(shape=np.array([2, 3], dtype=np.int32), low=0.0, high=1.0)
        return mb.add(x=x, y=noise)

    runner = MilReferenceRunner(mil.convert_program(prog))
    assert runner.unsupported_ops() == ["random_uniform"]
    with pytest.raises(UnsupportedOpError) as err:
        runner.run({"x": np.zeros((2, 3), np.float32)})
    assert err.value.op_type == "random_uniform"
    assert "unsupported op random_uniform" in str(err.value)


def test_op_unknown_to_coremltools_is_reported_at_load(mil):
    """A program with an op type coremltools itself cannot parse: still loads, reports, refuses to run."""
    from coremltools.libmodelpackage import ModelPackage

    m = Fn(lambda s, x: torch.relu(x) * 2)
    path = mil.convert_torch(m, [r(2, 3)])
    model_file = ModelPackage(str(path)).getRootModel().path()
    spec = ct.utils.load_spec(str(path))
    func = spec.mlProgram.functions["main"]
    for op in func.block_specializations[func.opset].operations:
        if op.type == "relu":
            op.type = "vendor_fancy_relu"
    with open(model_file, "wb") as fh:
        fh.write(spec.SerializeToString())

    runner = MilReferenceRunner(path)
    assert runner.unsupported_ops() == ["vendor_fancy_relu"]
    assert [s.name for s in runner.inputs] == ["x0"]
    with pytest.raises(UnsupportedOpError, match="unsupported op vendor_fancy_relu"):
        runner.run({"x0": np.zeros((2, 3), np.float32)})


def test_bad_feed_is_a_data_error(mil):
    from mobex.errors import DataError

    m = Fn(lambda s, x: x * 2)
    runner = MilReferenceRunner(mil.convert_torch(m, [r(2, 3)]))
    with pytest.raises(DataError, match="missing input"):
        runner.run({})
    with pytest.raises(DataError, match="shape"):
        runner.run({"x0": np.zeros((3, 3), np.float32)})


def test_missing_package_is_a_usage_error(tmp_path):
    from mobex.errors import UsageError

    with pytest.raises(UsageError, match="not found"):
        MilReferenceRunner(tmp_path / "nope.mlpackage")
