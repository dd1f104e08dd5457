"""Cross-layer equalization of the exported float torch graph, before PT2E: TFLite int8's equalization, ported.

The idea, the rules and the scale formulas are those of `mobex.quantize.tflite.equalize` (read its module
docstring for why and what it measured there); here they apply to the torch.fx graph that PT2E quantizes,
after BatchNorm is folded:
- a *linear stream* is a set of tensors joined by `add`, zero `pad` and `mean` over spatial dims, whose
  every producer is a convolution or linear with no activation after it and whose every consumer is a
  convolution (not grouped, or depthwise) or linear reading it as its input; channel c of the whole stream
  is multiplied by t_c (the producers' weight rows and biases), and the consumers' input channels divided by
  t_c, so the float function is unchanged; t_c equalizes the channels' ranges measured on the calibration
  data (`_linear_scales`, alpha 1, no weight term: mobex's measured default for TFLite);
- a *ReLU6 output* (of a convolution, through zero pads) read only by depthwise convolutions is scaled up,
  t_c = R / r_c >= 1 within the clip (`_clipped_scales`), exact on every calibration sample.
Weights shared by two ops, graph inputs and outputs, and anything else touching a stream leave it alone.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobex.quantize.executorch.graph import is_depthwise
from mobex.quantize.tflite.equalize import Equalization, _clipped_scales, _linear_scales

_CLIP = 6.0


@dataclass
class Stream:
    tensors: set[str] = field(default_factory=set)  # node names
    producers: set[str] = field(default_factory=set)  # weighted ops whose output rows scale
    consumers: set[str] = field(default_factory=set)  # weighted ops whose input channels scale
    clip: float | None = None


def _base(node: Any) -> str:
    return getattr(node.target, "__name__", "").split(".")[0] if node.op == "call_function" else ""


def _weighted(node: Any) -> bool:
    if _base(node) == "linear":
        return True
    if _base(node) != "conv2d":
        return False
    groups = node.args[6] if len(node.args) > 6 else 1
    return groups == 1 or _depthwise(node)


def _depthwise(node: Any) -> bool:
    return _base(node) == "conv2d" and is_depthwise(node)


def _attr(gm: Any, node: Any) -> Any:
    """The tensor behind a get_attr node (None for anything else, e.g. a missing bias)."""
    if getattr(node, "op", None) != "get_attr":
        return None
    return operator.attrgetter(node.target)(gm)


def _exclusive_weights(gm: Any, op: Any, readers: dict[str, int]) -> bool:
    """Weight (and bias) are constants that only `op` reads, so rescaling them changes nothing else."""
    params = [a for a in op.args[1:3] if a is not None]
    return all(_attr(gm, p) is not None and readers.get(p.target, 0) == 1 for p in params)


def _passes_through(node: Any) -> bool:
    base = _base(node)
    if base == "add":
        a, b = node.args[:2]
        if not all(hasattr(x, "meta") and "val" in x.meta for x in (a, b)):
            return False
        return a.meta["val"].shape == b.meta["val"].shape and node.kwargs.get("alpha", 1) == 1
    if base in ("pad", "constant_pad_nd"):
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        return mode == "constant" and not value
    if base == "mean":
        dims = {int(d) % node.args[0].meta["val"].dim() for d in node.args[1]}
        return not dims & {0, 1}
    return False


def _stream_inputs(node: Any) -> list[Any]:
    return list(node.args[:2]) if _base(node) == "add" else [node.args[0]]


def _grow(gm: Any, start: Any, readers: dict[str, int]) -> Stream | None:
    """The linear stream containing `start`, or None when any member breaks linearity (module docstring)."""
    stream = Stream()
    todo = [start]
    while todo:
        t = todo.pop()
        if t.name in stream.tensors:
            continue
        if t.op != "call_function" or t.meta["val"].dim() not in (2, 4):
            return None
        stream.tensors.add(t.name)
        if _weighted(t):
            if not _exclusive_weights(gm, t, readers):
                return None
            stream.producers.add(t.name)
        elif _passes_through(t):
            todo.extend(_stream_inputs(t))
        else:
            return None
        for user in t.users:
            if _passes_through(user):
                todo.extend([*_stream_inputs(user), user])
            elif _weighted(user) and user.args[0] is t and _exclusive_weights(gm, user, readers):
                stream.consumers.add(user.name)
            else:
                return None
    return stream


def _grow_clipped(gm: Any, clamp: Any, readers: dict[str, int]) -> Stream | None:
    """The output of conv -> ReLU6, through zero pads, when only depthwise convolutions read it (else None)."""
    from mobex.quantize.executorch.quantizer import is_relu6

    producer = clamp.args[0]
    if not is_relu6(clamp) or not _weighted(producer) or len(producer.users) != 1:
        return None
    if not _exclusive_weights(gm, producer, readers):
        return None
    stream = Stream(producers={producer.name}, clip=_CLIP)
    todo = [clamp]
    while todo:
        t = todo.pop()
        stream.tensors.add(t.name)
        if not t.users:
            return None
        for user in t.users:
            if _base(user) in ("pad", "constant_pad_nd") and _passes_through(user):
                todo.append(user)
            elif _depthwise(user) and user.args[0] is t and _exclusive_weights(gm, user, readers):
                stream.consumers.add(user.name)
            else:
                return None
    return stream


def find_streams(gm: Any, clipped: bool = True) -> list[Stream]:
    """Every stream of the graph that can be rescaled per channel (module docstring)."""
    readers: dict[str, int] = {}
    for node in gm.graph.nodes:
        for arg in node.all_input_nodes:
            if arg.op == "get_attr":
                readers[arg.target] = readers.get(arg.target, 0) + 1
    seen: set[str] = set()
    streams = []
    for node in gm.graph.nodes:
        if node.name in seen:
            continue
        stream = None
        if _weighted(node):
            stream = _grow(gm, node, readers)
        elif clipped and _base(node) in ("relu6", "hardtanh"):
            stream = _grow_clipped(gm, node, readers)
        if stream is not None and stream.consumers:
            seen |= stream.tensors
            streams.append(stream)
    return streams


def _channel_absmax(gm: Any, names: set[str], batches: list[tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """Per channel (dim 1), the largest |value| each named tensor takes over the calibration batches."""
    import torch

    out: dict[str, np.ndarray] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            value = super().run_node(n)
            if n.name in names:
                m = value.detach().abs().transpose(0, 1).reshape(value.shape[1], -1).amax(dim=1).numpy()
                out[n.name] = m if n.name not in out else np.maximum(out[n.name], m)
            return value

    recorder = Recorder(gm)
    with torch.no_grad():
        for batch in batches:
            recorder.run(*batch)
    return out


def equalize(gm: Any, batches: list[tuple[Any, ...]], *, clipped: bool = True, max_scale: float = 1e4) -> Equalization:
    """Rescale every equalizable stream of `gm` in place (its weights and biases); report what was done."""
    streams = find_streams(gm, clipped=clipped)
    absmax = _channel_absmax(gm, {t for s in streams for t in s.tensors}, batches) if streams else {}
    nodes = {n.name: n for n in gm.graph.nodes}
    applied = []
    clipped_applied = 0
    for stream in streams:
        r = np.max([absmax[t] for t in stream.tensors], axis=0).astype(np.float64)
        live = r > 0
        if not live.any():
            continue
        if stream.clip is not None:
            scale = _clipped_scales(r, live, stream.clip, max_scale)
        else:
            scale = _linear_scales(r, np.ones_like(r), live, 1.0, max_scale)
        for name in stream.producers:
            _scale_rows(gm, nodes[name], scale)
        for name in stream.consumers:
            _scale_inputs(gm, nodes[name], 1.0 / scale)
        applied.append(scale)
        clipped_applied += stream.clip is not None
    flat = np.concatenate(applied) if applied else np.ones(1)
    return Equalization(
        streams=len(applied),
        tensors=sum(len(s.tensors) for s in streams),
        min_scale=float(flat.min()),
        max_scale=float(flat.max()),
        clipped_streams=clipped_applied,
    )


def _scale_rows(gm: Any, op: Any, scale: np.ndarray) -> None:
    """Output channel c of a weighted op (weight rows and bias) times scale[c]."""
    import torch

    weight, bias = _attr(gm, op.args[1]), _attr(gm, op.args[2]) if len(op.args) > 2 else None
    s = torch.from_numpy(scale.astype(np.float32))
    with torch.no_grad():
        weight.mul_(s.reshape((-1,) + (1,) * (weight.dim() - 1)))
        if bias is not None:
            bias.mul_(s)


def _scale_inputs(gm: Any, op: Any, scale: np.ndarray) -> None:
    """Input channel c of a weighted op times scale[c] (for a depthwise convolution: its channel c)."""
    import torch

    weight = _attr(gm, op.args[1])
    s = torch.from_numpy(scale.astype(np.float32))
    with torch.no_grad():
        if _depthwise(op):
            weight.mul_(s.reshape(-1, 1, 1, 1))
        else:
            weight.mul_(s.reshape((1, -1) + (1,) * (weight.dim() - 2)))
