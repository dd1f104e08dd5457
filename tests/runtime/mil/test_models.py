"""Whole-model checks of the MIL reference interpreter: small CNN / ViT / MLP / BERT models converted
with coremltools (fp32 and fp16 programs), compressed-weight packages (coremltools.optimize),
recurrent layers (nn.LSTM / nn.GRU through mobex's converter), and an ImageNet-size MobileNetV2
(marked slow)."""

from __future__ import annotations

import copy

import coremltools as ct
import numpy as np
import pytest
import torch
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from mobex.runtime.mil import MilReferenceRunner  # noqa: E402

# Noise from coremltools and torch.export, not from the interpreter.
pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
]

# --------------------------------------------------------------------------- models


def _randomise_bn(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so fusing BN into conv actually changes the weights."""
    g = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2, generator=g)
            mod.running_var.uniform_(0.5, 1.5, generator=g)
            mod.weight.data.uniform_(0.5, 1.5, generator=g)
            mod.bias.data.uniform_(-0.2, 0.2, generator=g)
    return model.eval()


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, act=nn.Hardswish, se: bool = False):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = [
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            act(),
        ]
        if se:
            layers.append(SqueezeExcite(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.residual else y


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(4, c // 4), 1)
        self.fc2 = nn.Conv2d(max(4, c // 4), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


def small_mobilenet(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, 2, 1, bias=False),
        nn.BatchNorm2d(16),
        nn.Hardswish(),
        InvertedResidual(16, 16, 1, 2),
        InvertedResidual(16, 24, 2, 3, se=True),
        InvertedResidual(24, 24, 1, 3, act=nn.ReLU6),
        nn.Conv2d(24, 64, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(64, num_classes),
    )
    return _randomise_bn(model)


def mobilenet_v2(num_classes: int = 1000) -> nn.Module:
    """torchvision's MobileNetV2 layout (width 1.0), random weights."""
    torch.manual_seed(0)
    cfg = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    c = 32
    layers: list[nn.Module] = [nn.Conv2d(3, c, 3, 2, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU6()]
    for t, ch, n, s in cfg:
        for i in range(n):
            layers.append(InvertedResidual(c, ch, s if i == 0 else 1, t, act=nn.ReLU6))
            c = ch
    layers += [
        nn.Conv2d(c, 1280, 1, bias=False),
        nn.BatchNorm2d(1280),
        nn.ReLU6(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(1280, num_classes),
    ]
    return _randomise_bn(nn.Sequential(*layers))


class TinyViT(nn.Module):
    """Patch embedding, class token, one pre-norm transformer block (q/k/v attention, GELU MLP), head."""

    def __init__(self, dim: int = 32, heads: int = 4, patch: int = 8, image: int = 32, sdpa: bool = False):
        super().__init__()
        torch.manual_seed(0)
        # Sizes are plain ints (not read from tensor shapes): coremltools 9 fails on torch 2.13's
        # traced `int()` of a shape element.
        n = (image // patch) ** 2
        self.heads, self.sdpa, self.n, self.dim = heads, sdpa, n + 1, dim
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.1)
        self.ln1, self.ln2, self.ln3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls, t], dim=1) + self.pos  # batch 1
        b, n, d = 1, self.n, self.dim
        h = self.ln1(t)

        def split(z):
            return z.reshape(b, n, self.heads, d // self.heads).permute(0, 2, 1, 3)

        q, k, v = split(self.q(h)), split(self.k(h)), split(self.v(h))
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1) @ v
        t = t + self.proj(a.permute(0, 2, 1, 3).reshape(b, n, d))
        t = t + self.fc2(F.gelu(self.fc1(self.ln2(t))))
        return self.head(self.ln3(t)[:, 0])


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2, self.fc3 = nn.Linear(20, 64), nn.Linear(64, 64), nn.Linear(64, 5)
        self.norm = nn.LayerNorm(64)

    def forward(self, x):
        h = F.relu(self.fc1(x))
        h = F.gelu(self.norm(self.fc2(h)), approximate="tanh")
        return torch.log_softmax(self.fc3(h), dim=-1)


class BertWrapper(nn.Module):
    """transformers BertModel returning last_hidden_state.

    Position and token-type ids are passed as buffers and the additive 4-D mask is built here:
    transformers' own mask helpers use `new_ones`, and its default position ids an `int()` of a
    1-element array, both of which coremltools 9 fails to convert on torch 2.13.
    """

    def __init__(self, seq: int = 16):
        super().__init__()
        from transformers import BertConfig, BertModel

        torch.manual_seed(0)
        cfg = BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
        )
        self.bert = BertModel(cfg).eval()
        self.register_buffer("position_ids", torch.arange(seq).unsqueeze(0))
        self.register_buffer("token_type_ids", torch.zeros(1, seq, dtype=torch.long))

    def forward(self, input_ids, attention_mask):
        mask = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        out = self.bert(
            input_ids=input_ids, attention_mask=mask, position_ids=self.position_ids, token_type_ids=self.token_type_ids
        )
        return out.last_hidden_state


def bert_example():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (1, 16), generator=g)
    mask = torch.ones(1, 16, dtype=torch.long)
    mask[0, 11:] = 0
    return [ids, mask]


def image(*shape, seed: int = 0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


MODELS = {
    "mobilenet": (small_mobilenet, lambda: [image(1, 3, 32, 32)], {}),
    "vit": (TinyViT, lambda: [image(1, 3, 32, 32)], {}),
    "mlp": (MLP, lambda: [image(4, 20)], {}),
    "bert": (BertWrapper, bert_example, {"names": ["input_ids", "attention_mask"], "dtypes": [np.int32, np.int32]}),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_whole_model_parity(name, precision, mil):
    build, example_fn, kw = MODELS[name]
    model, example = build(), example_fn()
    runner = mil.check_torch(model, example, fp16=precision == "fp16", **kw)
    assert runner.computes_in_fp16 == (precision == "fp16")


def test_vit_with_sdpa_decomposed_and_as_ios18_op(mil):
    """F.scaled_dot_product_attention: decomposed for iOS16, the iOS18 `scaled_dot_product_attention` op."""
    model, example = TinyViT(sdpa=True), [image(1, 3, 32, 32)]
    mil.check_torch(model, example)
    runner = mil.check_torch(model, example, target=ct.target.iOS18)
    assert runner.op_counts().get("scaled_dot_product_attention", 0) == 1


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("name", ["bert", "mobilenet", "vit"])
def test_torch_export_path(name, precision, mil):
    """The same models through torch.export (coremltools' ExportedProgram frontend)."""
    build, example_fn, _ = MODELS[name]
    model, example = build(), example_fn()
    exported = torch.export.export(model, tuple(example)).run_decompositions({})
    converted = ct.convert(
        exported,
        minimum_deployment_target=ct.target.iOS16,
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
    )
    path = mil.path("exported")
    converted.save(str(path))
    runner = MilReferenceRunner(path)
    assert runner.unsupported_ops() == []
    got = runner.run(mil.feed_of(runner, example))[0]
    want = mil.torch_outputs(model, example)[0]
    if precision == "fp32":
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    else:
        p = mil.parity(got, want)
        assert p["rel_to_scale"] <= 1e-2 and p["cosine"] >= 0.999, p


# --------------------------------------------------------------------------- compressed weights


class SmallNet(nn.Module):
    """Named layers (their names carry over to the Core ML weight names), no BatchNorm to fuse."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=4)
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x):
        h = F.relu(self.conv2(F.relu(self.conv1(x))))
        h = F.adaptive_avg_pool2d(h, 1).flatten(1)
        return self.fc2(F.gelu(self.fc1(h)))


def _compress(model, kind: str):
    import coremltools.optimize.coreml as cto

    th = 64  # low threshold: compress every weight of the small net

    def cfg(op_config):
        return cto.OptimizationConfig(global_config=op_config)

    if kind == "int8_per_channel":
        return cto.linear_quantize_weights(
            model,
            cfg(
                cto.OpLinearQuantizerConfig(
                    mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=th
                )
            ),
        )
    if kind == "palettize_4bit":
        return cto.palettize_weights(model, cfg(cto.OpPalettizerConfig(mode="kmeans", nbits=4, weight_threshold=th)))
    if kind == "prune_50":
        return cto.prune_weights(model, cfg(cto.OpMagnitudePrunerConfig(target_sparsity=0.5, weight_threshold=th)))
    if kind == "int4_per_block":  # iOS18 constexpr_blockwise_shift_scale with offsets
        return cto.linear_quantize_weights(
            model,
            cfg(
                cto.OpLinearQuantizerConfig(
                    mode="linear", dtype="int4", granularity="per_block", block_size=4, weight_threshold=th
                )
            ),
        )
    if kind == "palettize_grouped_2bit":  # iOS18 per-grouped-channel LUTs
        return cto.palettize_weights(
            model,
            cfg(
                cto.OpPalettizerConfig(
                    mode="kmeans", nbits=2, granularity="per_grouped_channel", group_size=4, weight_threshold=th
                )
            ),
        )
    if kind == "prune_then_palettize":  # iOS18 joint compression: constexpr_lut_to_sparse
        sparse = _compress(model, "prune_50")
        return cto.palettize_weights(
            sparse, cfg(cto.OpPalettizerConfig(mode="kmeans", nbits=2, weight_threshold=th)), joint_compression=True
        )
    if kind == "prune_then_int8":  # iOS18 joint compression: constexpr_sparse_blockwise_shift_scale
        sparse = _compress(model, "prune_50")
        return cto.linear_quantize_weights(
            sparse,
            cfg(cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", weight_threshold=th)),
            joint_compression=True,
        )
    raise AssertionError(kind)


COMPRESSION = {
    "int8_per_channel": (ct.target.iOS16, "constexpr_affine_dequantize"),
    "palettize_4bit": (ct.target.iOS16, "constexpr_lut_to_dense"),
    "prune_50": (ct.target.iOS16, "constexpr_sparse_to_dense"),
    "int4_per_block": (ct.target.iOS18, "constexpr_blockwise_shift_scale"),
    "palettize_grouped_2bit": (ct.target.iOS18, "constexpr_lut_to_dense"),
    "prune_then_palettize": (ct.target.iOS18, "constexpr_lut_to_sparse"),
    "prune_then_int8": (ct.target.iOS18, "constexpr_sparse_blockwise_shift_scale"),
}


def _decompressed_torch_model(model: nn.Module, decompressed_mlmodel) -> nn.Module:
    """A copy of `model` whose weights are coremltools' own decompression of the package's weights."""
    consts = {
        op.outputs[0].name: op.outputs[0].val
        for op in decompressed_mlmodel._mil_program.functions["main"].operations
        if op.op_type == "const"
    }
    out = copy.deepcopy(model)
    state = out.state_dict()
    replaced = 0
    for key in state:
        stem = key.replace(".", "_")
        match = [v for k, v in consts.items() if k.startswith(stem) and np.shape(v) == tuple(state[key].shape)]
        if key.endswith("weight") and match:
            state[key] = torch.from_numpy(np.asarray(match[0], dtype=np.float32))
            replaced += 1
    assert replaced == 4, f"expected the 4 layer weights in the decompressed program, found {replaced}"
    out.load_state_dict(state)
    return out.eval()


@pytest.mark.parametrize("kind", sorted(COMPRESSION))
def test_compressed_weights(kind, mil):
    import coremltools.optimize.coreml as cto

    target, constexpr_op = COMPRESSION[kind]
    model, x = SmallNet().eval(), image(1, 3, 16, 16)
    with torch.no_grad():
        traced = torch.jit.trace(model, (x,))
    fp16_model = ct.convert(
        traced, inputs=[ct.TensorType(name="x", shape=x.shape, dtype=np.float32)], minimum_deployment_target=target
    )
    compressed = _compress(fp16_model, kind)
    path = mil.path("compressed")
    compressed.save(str(path))

    runner = MilReferenceRunner(path)
    assert runner.unsupported_ops() == []
    # conv1's 3 input channels do not split into int4 blocks / LUT groups: 3 of 4 weights may be compressed.
    assert runner.op_counts().get(constexpr_op, 0) >= 3, runner.op_counts()
    got = runner.run({"x": x.numpy()})[0]

    decompressed = cto.decompress_weights(compressed)
    reference = _decompressed_torch_model(model, decompressed)
    with torch.no_grad():
        want = reference(x).numpy()
        original = model(x).numpy()
    p = mil.parity(got, want)
    assert p["rel_to_scale"] <= 1e-2 and p["cosine"] >= 0.999, p
    # The compression really changed the function (the check is not vacuous).
    assert np.max(np.abs(want - original)) > 10 * p["max_abs"] or np.max(np.abs(want - original)) > 1e-3

    # The interpreter's decompression agrees with coremltools' own, value for value.
    plain = mil.path("decompressed")
    decompressed.save(str(plain))
    np.testing.assert_array_equal(MilReferenceRunner(plain).run({"x": x.numpy()})[0], got)


# --------------------------------------------------------------------------- recurrent layers


class Recurrent(nn.Module):
    """nn.LSTM / nn.GRU returning the output sequence and every final state."""

    def __init__(self, kind: str, layers: int, bidirectional: bool, batch_first: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.rnn = getattr(nn, kind)(6, 8, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first)

    def forward(self, x):
        out, state = self.rnn(x)
        return (out, *state) if isinstance(state, tuple) else (out, state)


RECURRENT = [
    (kind, layers, bidir, batch_first)
    for kind in ("LSTM", "GRU")
    for layers in (1, 2)
    for bidir in (False, True)
    for batch_first in (False, True)
]
# One fp32 and one fp16 configuration of each layer in the default run, the rest marked slow.
FAST_RECURRENT = {("LSTM", 2, True, True, "fp32"), ("LSTM", 1, False, False, "fp16"), ("GRU", 2, True, True, "fp32"),
                  ("GRU", 1, False, False, "fp16")}  # fmt: skip


def _recurrent_params():
    for kind, layers, bidir, batch_first in RECURRENT:
        for precision in ("fp32", "fp16"):
            case = (kind, layers, bidir, batch_first, precision)
            marks = () if case in FAST_RECURRENT else (pytest.mark.slow,)
            name = f"{kind}-{layers}layer-{'bi' if bidir else 'uni'}-{'batch_first' if batch_first else 'seq_first'}"
            yield pytest.param(*case, id=f"{name}-{precision}", marks=marks)


@pytest.mark.parametrize(("kind", "layers", "bidirectional", "batch_first", "precision"), list(_recurrent_params()))
def test_recurrent_layers_via_mobex_converter(kind, layers, bidirectional, batch_first, precision, tmp_path):
    """nn.LSTM (-> MIL lstm ops) and nn.GRU (-> while_loop, coremltools has no GRU op matching torch's)
    converted by mobex's Core ML converter run in the interpreter and match torch."""
    from mobex.converters.coreml import CoreMLMetadata, convert_coreml

    torch.set_num_threads(1)
    model = Recurrent(kind, layers, bidirectional, batch_first).eval()
    x = image(3, 5, 6, seed=1)
    variant = convert_coreml(
        model, {"x": x}, tmp_path / "rnn.mlpackage", precision=precision,
        metadata=CoreMLMetadata(name="rnn", version="0.0.0"),
    )  # fmt: skip
    runner = MilReferenceRunner(variant.path)
    assert runner.unsupported_ops() == []
    counts = runner.op_counts()
    assert counts.get("lstm", 0) == (layers if kind == "LSTM" else 0)
    assert counts.get("while_loop", 0) == (layers * (1 + bidirectional) if kind == "GRU" else 0)
    got = runner.run({"x": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-5 if precision == "fp32" else 3e-3)


# --------------------------------------------------------------------------- ImageNet size


@pytest.mark.slow
def test_mobilenet_v2_imagenet_size(mil):
    """ImageNet-size MobileNetV2 (~410M MACs at 256x256), fp16: the interpreter's output matches torch.

    Speed is measured by scripts/bench_interpreter.py, not asserted here (timed tests are flaky on shared hosts).
    """
    torch.set_num_threads(1)
    model, x = mobilenet_v2(), image(1, 3, 256, 256)
    path = mil.convert_torch(model, [x], fp16=True)
    out = MilReferenceRunner(path).run({"x0": x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    p = mil.parity(out, want)
    assert p["cosine"] >= 0.999, p
