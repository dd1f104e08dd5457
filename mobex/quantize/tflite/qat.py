"""Quantization-aware fine-tuning of a built int8 .tflite, in the int8 model's own terms.

Post-training int8 of EfficientNet-Lite0 is capped near 22 dB output SNR by its per-tensor activation
scales, and the float fallback that restores the gate costs latency (docs/quantization.md). Training
can do what rounding cannot: move the weights so that the network tolerates the int8 activations.

Fine-tuning a torch copy of the model and converting again would lose the point: the new weights get new
ranges, new GPTQ levels and new bias corrections, and what was trained is not what ships (measured in
session 2). So this module trains the *built* int8 model itself. `Int8Twin` reads the .tflite and runs
the same graph in torch: every int8 activation is fake-quantized with the scale and zero point stored in
the file, every int8 weight is its per-channel scale times a trainable level rounded straight-through,
float ops (a fallback) stay float. Training distils the float model's outputs on the recipe's training
data (no labels needed) into the weight levels, the biases and (LSQ) the activation step sizes. They are
written back into the flatbuffer in place, each int32 bias with the scale TFLite requires (input step x
weight scale); ops, layout and weight scales are untouched, so the LiteRT model is the twin.

The twin is checked against LiteRT before training (`fidelity_db`) and every result is measured with
LiteRT, never with the twin.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobex.quantize.tflite.graph import DATA_MOVEMENT_OPS, WEIGHTED_OPS, TfliteGraph, writable_tensor

# Ops the twin can run; a graph with any other op is not fine-tuned (the report says which op).
SUPPORTED_OPS = frozenset(
    {*WEIGHTED_OPS, "QUANTIZE", "DEQUANTIZE", "ADD", "SUB", "MUL", "PAD", "TRANSPOSE", "RESHAPE", "MEAN"}
)
_INT8, _FLOAT32, _INT32 = 9, 0, 2
_ACTIVATIONS = {0: "none", 1: "relu", 3: "relu6"}


@dataclass(frozen=True)
class FinetuneSettings:
    """How long and how hard to train (the recipe's [quantization.finetune] table)."""

    epochs: int = 2
    learning_rate: float = 0.02  # Adam step for the weights, in int8 levels (a weight moves a level in ~50 steps)
    bias_learning_rate: float = 1e-4  # Adam step for the biases, in the model's own units
    scale_learning_rate: float = 1e-3  # Adam step for the activation log-scales (0 keeps the calibrated scales)
    batch_size: int = 16
    max_samples: int = 2048  # at most this many training samples (evenly spread)
    seed: int = 0
    threads: int = 2


@dataclass
class FinetuneReport:
    epochs: int
    samples: int
    seconds: float
    fidelity_db: float  # twin vs LiteRT on the untouched model (how well the twin represents it)
    losses: list[float] = field(default_factory=list)  # mean distillation loss per epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "samples": self.samples,
            "seconds": round(self.seconds, 1),
            "twin_fidelity_db": round(self.fidelity_db, 2),
            "loss_per_epoch": [round(v, 6) for v in self.losses],
        }


class UnsupportedGraph(Exception):
    """The twin cannot run this graph (an op it does not implement)."""


def unsupported_ops(graph: TfliteGraph) -> list[str]:
    return sorted({op.kind for op in graph.ops if op.kind not in SUPPORTED_OPS})


def _torch_twin(data: bytes, learn_scales: bool = False):  # noqa: ANN202 - torch imported lazily (fast CLI start)
    import torch
    import torch.nn.functional as F  # noqa: N812
    from torch import nn

    def round_ste(x):  # noqa: ANN001, ANN202
        return x + (torch.round(x) - x).detach()

    def fake_quant(x, scale, zero_point: float):  # noqa: ANN001, ANN202
        """int8 rounding, straight-through inside the range (zero gradient where it clips); a tensor `scale`
        gets the LSQ gradient (Esser et al. 2020), so the step size itself can train."""
        return (torch.clamp(round_ste(x / scale) + zero_point, -128, 127) - zero_point) * scale

    def activation(x, code: int):  # noqa: ANN001, ANN202
        if code == 0:
            return x
        if code == 1:
            return F.relu(x)
        if code == 3:
            return torch.clamp(x, 0.0, 6.0)
        raise UnsupportedGraph(f"fused activation code {code}")

    def same_padding(x, kernel, stride, dilation):  # noqa: ANN001, ANN202 - TensorFlow's SAME, on NCHW
        pads = []
        for size, k, s, d in zip(x.shape[2:], kernel, stride, dilation, strict=True):
            total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        return F.pad(x, (*pads[1], *pads[0]))

    class Int8Twin(nn.Module):
        """The int8 graph in torch (see module docstring). Trainable: `levels` and `biases`."""

        def __init__(self, data: bytes, learn_scales: bool = False) -> None:
            super().__init__()
            graph = TfliteGraph(data)
            missing = unsupported_ops(graph)
            if missing:
                raise UnsupportedGraph(", ".join(missing))
            self.graph = graph
            producer = {out: op for op in graph.ops for out in op.outputs}
            self.levels = nn.ParameterDict()
            self.biases = nn.ParameterDict()
            self.weight_scale: dict[str, torch.Tensor] = {}
            self.weight_tensor: dict[str, int] = {}
            self.fixed_weight: dict[str, torch.Tensor] = {}
            # Activation step sizes: one trainable log-scale per int8 activation, shared along data-movement
            # ops (TFLite gives their output the input's scale); the model input's own scale stays.
            self.log_scales = nn.ParameterDict()
            self.scale_key: dict[int, str] = {}
            for op in graph.ops if learn_scales else []:
                out = op.outputs[0]
                info = graph.tensors[out]
                if info.type != _INT8 or info.scales is None or len(info.scales) != 1:
                    continue
                if op.kind in DATA_MOVEMENT_OPS and op.inputs[0] in self.scale_key:
                    self.scale_key[out] = self.scale_key[op.inputs[0]]
                elif not (op.kind == "QUANTIZE" and op.inputs[0] in graph.input_tensors):
                    self.log_scales[str(out)] = nn.Parameter(torch.tensor(float(np.log(info.scales[0]))))
                    self.scale_key[out] = str(out)
            for op in graph.ops:
                if op.kind not in WEIGHTED_OPS:
                    continue
                key, index = str(op.index), op.inputs[1]
                source = producer.get(index)
                if source is not None and source.kind == "DEQUANTIZE":  # int8 weights of a float-compute op
                    index = source.inputs[0]
                self.weight_tensor[key] = index
                info = graph.tensors[index]
                value = graph.constant(index)
                if value is None:
                    raise UnsupportedGraph(f"{op.kind} with computed weights")
                if info.type == _INT8 and info.scales is not None:
                    shape = [1] * value.ndim
                    shape[info.quantized_dimension] = -1
                    self.weight_scale[key] = torch.tensor(info.scales.reshape(shape), dtype=torch.float32)
                    self.levels[key] = nn.Parameter(torch.tensor(value.astype(np.float32)))
                else:
                    self.fixed_weight[key] = torch.tensor(value.astype(np.float32))
                if len(op.inputs) > 2 and op.inputs[2] >= 0:
                    bias = graph.tensors[op.inputs[2]]
                    stored = graph.constant(op.inputs[2]).astype(np.float64)
                    if bias.type == _INT32 and bias.scales is not None:
                        stored = stored * bias.scales
                    self.biases[key] = nn.Parameter(torch.tensor(stored, dtype=torch.float32))

        def weight(self, key: str):  # noqa: ANN201
            if key in self.fixed_weight:
                return self.fixed_weight[key]
            return round_ste(self.levels[key]).clamp(-127, 127) * self.weight_scale[key]

        def _quantized(self, x, tensor: int):  # noqa: ANN001, ANN202
            info = self.graph.tensors[tensor]
            if info.type != _INT8 or info.scales is None:
                return x
            key = self.scale_key.get(tensor)
            scale = torch.exp(self.log_scales[key]) if key is not None else float(info.scales[0])
            return fake_quant(x, scale, 0.0 if info.zero_points is None else float(info.zero_points[0]))

        def activation_scale(self, tensor: int) -> float:
            key = self.scale_key.get(tensor)
            if key is not None:
                return float(torch.exp(self.log_scales[key].detach()))
            return float(self.graph.tensors[tensor].scales[0])

        def _constant(self, tensor: int):  # noqa: ANN202
            info = self.graph.tensors[tensor]
            value = self.graph.constant(tensor).astype(np.float32)
            if info.type == _INT8 and info.scales is not None:
                zero = 0 if info.zero_points is None else info.zero_points.reshape(-1).astype(np.float32)
                value = (value - zero) * info.scales.astype(np.float32)
            return torch.tensor(value)

        def forward(self, *inputs):  # noqa: ANN002, ANN201
            # An int8 model input (int8_io) holds the quantized feed: the twin rounds it the same way.
            env = {t: self._quantized(x, t) for t, x in zip(self.graph.input_tensors, inputs, strict=True)}
            for op in self.graph.ops:
                ins, kind, options = op.inputs, op.kind, op.options
                if kind in ("QUANTIZE", "DEQUANTIZE"):
                    if ins[0] not in env:
                        continue  # a constant's DEQUANTIZE: the weighted op reads the constant itself
                    y = env[ins[0]]
                elif kind in ("ADD", "SUB", "MUL"):
                    a = env[ins[0]] if ins[0] in env else self._constant(ins[0])
                    b = env[ins[1]] if ins[1] in env else self._constant(ins[1])
                    y = a + b if kind == "ADD" else a - b if kind == "SUB" else a * b
                    y = activation(y, getattr(options, "fusedActivationFunction", 0))
                elif kind == "PAD":
                    pads = self.graph.constant(ins[1])
                    y = F.pad(env[ins[0]], [int(v) for d in reversed(range(pads.shape[0])) for v in pads[d]])
                elif kind == "TRANSPOSE":
                    y = env[ins[0]].permute(*[int(p) for p in self.graph.constant(ins[1])])
                elif kind == "RESHAPE":
                    shape = [int(d) for d in self.graph.tensors[op.outputs[0]].shape]
                    y = env[ins[0]].reshape([env[ins[0]].shape[0], *shape[1:]])  # the batch trains larger
                elif kind == "MEAN":
                    axes = [int(a) for a in np.atleast_1d(self.graph.constant(ins[1]))]
                    y = env[ins[0]].mean(dim=axes, keepdim=bool(options.keepDims))
                elif kind == "FULLY_CONNECTED":
                    key = str(op.index)
                    w = self.weight(key)
                    y = F.linear(
                        env[ins[0]].reshape(-1, w.shape[1]), w, self.biases[key] if key in self.biases else None
                    )
                    y = activation(y, options.fusedActivationFunction)
                else:  # CONV_2D, DEPTHWISE_CONV_2D: NHWC in TFLite, NCHW in torch
                    key = str(op.index)
                    x = env[ins[0]].permute(0, 3, 1, 2)
                    w = self.weight(key)
                    w = w.permute(0, 3, 1, 2) if kind == "CONV_2D" else w.permute(3, 0, 1, 2)
                    stride = (options.strideH, options.strideW)
                    dilation = (options.dilationHFactor, options.dilationWFactor)
                    if options.padding == 0:  # SAME
                        x = same_padding(x, w.shape[2:], stride, dilation)
                    groups = 1 if kind == "CONV_2D" else x.shape[1]
                    bias = self.biases[key] if key in self.biases else None
                    y = F.conv2d(x, w, bias, stride=stride, dilation=dilation, groups=groups)
                    y = activation(y, options.fusedActivationFunction).permute(0, 2, 3, 1)
                env[op.outputs[0]] = self._quantized(y, op.outputs[0])
            return [env[t] for t in self.graph.output_tensors]

        def write_back(self, data: bytes) -> bytes:
            """`data` with this twin's int8 weight levels, biases and (when trained) activation scales written in
            place; an int32 bias takes the scale TFLite requires, input scale x weight scale."""
            from ai_edge_litert import schema_py_generated as schema

            model = bytearray(data)
            tensors = schema.Model.GetRootAs(model, 0).Subgraphs(0)
            for tensor in self.scale_key:
                tensors.Tensors(tensor).Quantization().ScaleAsNumpy()[:] = self.activation_scale(tensor)
            for op in self.graph.ops:
                key = str(op.index)
                if key in self.levels:
                    levels = torch.clamp(torch.round(self.levels[key].detach()), -127, 127).numpy()
                    writable_tensor(model, self.weight_tensor[key], np.int8)[:] = levels.astype(np.int8).reshape(-1)
                if key in self.biases:
                    bias = self.graph.tensors[op.inputs[2]]
                    value = self.biases[key].detach().numpy().astype(np.float64).reshape(-1)
                    if bias.type == _INT32 and bias.scales is not None:
                        scales = bias.scales
                        if op.inputs[0] in self.scale_key:
                            weight_scales = self.graph.tensors[self.weight_tensor[key]].scales
                            scales = (self.activation_scale(op.inputs[0]) * weight_scales).astype(np.float32)
                            tensors.Tensors(op.inputs[2]).Quantization().ScaleAsNumpy()[:] = scales
                        stored = np.clip(np.round(value / scales), -(2**31), 2**31 - 1).astype(np.int32)
                        writable_tensor(model, op.inputs[2], np.int32)[:] = stored
                    else:
                        writable_tensor(model, op.inputs[2], np.float32)[:] = value.astype(np.float32)
            return bytes(model)

    return Int8Twin(data, learn_scales)


def finetune_int8(
    data: bytes,
    inputs: list[str],
    train_feeds: list[dict[str, np.ndarray]],
    teacher_outputs: list[np.ndarray],
    settings: FinetuneSettings,
    runner_outputs: Any,
) -> tuple[bytes, FinetuneReport]:
    """Distil `teacher_outputs` (the float model on `train_feeds`, one array per output, samples first) into
    the int8 model `data`; return the model with the trained levels, biases and activation step sizes, and
    what happened.

    `runner_outputs(model_bytes, feeds)` runs a model in LiteRT (for the twin's fidelity check).
    Raises UnsupportedGraph when the twin cannot represent the graph.
    """
    import torch

    start = time.perf_counter()
    torch.manual_seed(settings.seed)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(settings.threads)
    try:
        twin = _torch_twin(data, learn_scales=settings.scale_learning_rate > 0)
        picks = np.linspace(0, len(train_feeds) - 1, min(settings.max_samples, len(train_feeds))).round().astype(int)
        x = [np.concatenate([train_feeds[i][name] for i in picks]).astype(np.float32) for name in inputs]
        # The teacher's rows follow the feeds (each feed may hold a batch): keep the picked feeds' rows.
        teacher = [_rows_of(np.asarray(t), len(train_feeds), picks) for t in teacher_outputs]
        rows = x[0].shape[0]
        fidelity = _fidelity(
            twin, data, [{n: train_feeds[i][n] for n in inputs} for i in picks[:8]], inputs, runner_outputs
        )
        groups = [
            (list(twin.levels.values()), settings.learning_rate),
            (list(twin.biases.values()), settings.bias_learning_rate),
            (list(twin.log_scales.values()), settings.scale_learning_rate),
        ]
        opt = torch.optim.Adam([{"params": params, "lr": lr} for params, lr in groups if params])
        steps = settings.epochs * -(-rows // settings.batch_size)
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
        rng = np.random.default_rng(settings.seed)
        losses = []
        for _ in range(settings.epochs):
            order = rng.permutation(rows)
            total = 0.0
            for begin in range(0, len(order), settings.batch_size):
                batch = order[begin : begin + settings.batch_size]
                outs = twin(*[torch.from_numpy(a[batch]) for a in x])
                loss = sum(
                    torch.mean((o - torch.from_numpy(t[batch])) ** 2) for o, t in zip(outs, teacher, strict=True)
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                total += loss.item() * len(batch)
            losses.append(total / len(order))
        tuned = twin.write_back(data)
    finally:
        torch.set_num_threads(previous_threads)
    return tuned, FinetuneReport(settings.epochs, len(picks), time.perf_counter() - start, float(fidelity), losses)


def _rows_of(outputs: np.ndarray, feeds: int, picks: np.ndarray) -> np.ndarray:
    per_feed = outputs.reshape(feeds, -1, *outputs.shape[1:])
    return per_feed[picks].reshape(-1, *outputs.shape[1:])


def _fidelity(twin: Any, data: bytes, feeds: list[dict[str, np.ndarray]], inputs: list[str], run: Any) -> float:
    """Output SNR (dB) of the twin against LiteRT on a few samples of the untouched model."""
    import torch

    real = run(data, feeds)
    with torch.no_grad():
        mine = twin(*[torch.from_numpy(np.concatenate([f[n] for f in feeds]).astype(np.float32)) for n in inputs])
    signal = sum(float(np.sum(np.square(r))) for r in real)
    noise = sum(float(np.sum(np.square(r - m.numpy()))) for r, m in zip(real, mine, strict=True))
    return 10 * np.log10(signal / max(noise, 1e-30))
