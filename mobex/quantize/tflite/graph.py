"""A small read view of a .tflite graph for the int8 work: ops, their scopes, weights, biases.

ai-edge-quantizer addresses an op by its *scope*: the names of its output tensors joined by ";" with a
trailing ";" (`tfl_flatbuffer_utils.get_op_scope`). The same scope names the op in the float model and
in every quantized model made from it, which is how mobex maps an op of a quantized model back to its
float weights and how a recipe keeps a chosen op in float (`op_regex`).

`writable_tensor` returns a numpy view into a bytearray holding the model, so a bias can be rewritten
in place without re-serialising the flatbuffer (ai-edge-quantizer keeps large buffers after the
flatbuffer, addressed by offset/size; small ones inline; both are handled).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

# Ops that only move data: in int8 they reuse their input's scale and add no rounding error.
DATA_MOVEMENT_OPS = (
    "RESHAPE",
    "TRANSPOSE",
    "SQUEEZE",
    "EXPAND_DIMS",
    "PAD",
    "PADV2",
    "GATHER",
    "SLICE",
    "STRIDED_SLICE",
)

_NUMPY_OF_TFL = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    type: int  # TFLite TensorType code
    buffer: int
    scales: np.ndarray | None  # per-tensor (1 value) or per-channel quantization scales
    quantized_dimension: int
    zero_points: np.ndarray | None = None  # int64, one per scale (None when the tensor is not quantized)

    @property
    def is_int8(self) -> bool:
        return self.type == 9


@dataclass(frozen=True)
class OpInfo:
    index: int
    kind: str  # "CONV_2D", "ADD", ... (ai-edge-quantizer's op name, or "OP_<code>" for others)
    scope: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    options: Any  # the flatbuffer options object (strides, padding, ...) or None

    @property
    def label(self) -> str:
        """A short human name: op kind and the torch module path of its first output tensor."""
        return f"{self.kind} {short_scope(self.scope)}"

    @property
    def regex(self) -> str:
        """The ai-edge-quantizer scope regex that matches exactly this op."""
        return "^" + re.escape(self.scope) + "$"


def short_scope(scope: str) -> str:
    """`...NamedIO/model.Net_model/model.Block_0/torch.nn.modules.conv.Conv2d_conv;1;` -> `Block_0/conv`."""
    first = scope.split(";")[0]
    first = first.split("NamedIO/", 1)[-1]
    parts = [p for p in first.split("/") if p]
    if len(parts) > 1 and parts[0].endswith("_model"):
        parts = parts[1:]  # the wrapper's own "model" attribute
    cleaned = []
    for part in parts:
        name = part.rsplit(".", 1)[-1]  # drop the module path of the class
        cleaned.append(name)
    return "/".join(cleaned) or first


class TfliteGraph:
    """Operators and tensors of the main subgraph of a .tflite model (parsed once)."""

    def __init__(self, data: bytes | bytearray) -> None:
        from ai_edge_quantizer.utils import tfl_flatbuffer_utils as fu

        self._model = fu.read_model(bytes(data))
        graph = self._model.subgraphs[0]
        self.tensors: list[TensorInfo] = []
        for i, t in enumerate(graph.tensors):
            q = t.quantization
            scales = zero_points = None
            qdim = 0
            if q is not None and q.scale is not None and len(q.scale):
                scales = np.asarray(q.scale, dtype=np.float64)
                qdim = int(q.quantizedDimension)
            if q is not None and q.zeroPoint is not None and len(q.zeroPoint):
                zero_points = np.asarray(q.zeroPoint, dtype=np.int64)
            shape = tuple(int(d) for d in (t.shape if t.shape is not None else ()))
            name = fu.get_tensor_name(t)
            self.tensors.append(TensorInfo(i, name, shape, int(t.type), int(t.buffer), scales, qdim, zero_points))
        self.ops: list[OpInfo] = []
        for i, op in enumerate(graph.operators):
            code = self._model.operatorCodes[op.opcodeIndex]
            builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            name = fu.TFL_OP_CODE_TO_NAME.get(builtin)
            kind = str(name.value) if name is not None else _builtin_name(builtin)
            self.ops.append(
                OpInfo(
                    index=i,
                    kind=kind,
                    scope=fu.get_op_scope(op, graph.tensors),
                    inputs=tuple(int(x) for x in (op.inputs if op.inputs is not None else ())),
                    outputs=tuple(int(x) for x in (op.outputs if op.outputs is not None else ())),
                    options=op.builtinOptions,
                )
            )
        self.input_tensors = tuple(int(x) for x in graph.inputs)
        self.output_tensors = tuple(int(x) for x in graph.outputs)
        self._by_scope = {op.scope: op for op in self.ops}
        # How many tensors read each buffer: a shared buffer must not be rewritten for one of them.
        self.buffer_users: dict[int, int] = {}
        for t in self.tensors:
            self.buffer_users[t.buffer] = self.buffer_users.get(t.buffer, 0) + 1

    def op_by_scope(self, scope: str) -> OpInfo | None:
        return self._by_scope.get(scope)

    def constant(self, tensor: int) -> np.ndarray | None:
        """The stored value of a constant tensor (weights, biases), or None for activations."""
        info = self.tensors[tensor]
        buffer = self._model.buffers[info.buffer]
        data = buffer.data
        if data is None or len(data) == 0:
            return None
        dtype = _NUMPY_OF_TFL.get(info.type)
        if dtype is None:
            return None
        return np.frombuffer(bytes(data), dtype=dtype).reshape(info.shape)

    def quantizable_ops(self) -> list[OpInfo]:
        """Ops ai-edge-quantizer has a quantization rule for (QUANTIZE/DEQUANTIZE and unknown ops excluded)."""
        return [op for op in self.ops if not op.kind.startswith("OP_") and op.kind not in ("QUANTIZE", "DEQUANTIZE")]


# TFLite's fused recurrent ops, and the torch modules whose unrolled ops (FULLY_CONNECTED, LOGISTIC, TANH, MUL,
# ADD, SLICE per step) litert-torch names after them: a recurrent state passes through them at every step, so
# int8 rounding of it compounds over the sequence.
RECURRENT_OPS = frozenset(
    {
        "UNIDIRECTIONAL_SEQUENCE_LSTM",
        "BIDIRECTIONAL_SEQUENCE_LSTM",
        "UNIDIRECTIONAL_SEQUENCE_RNN",
        "BIDIRECTIONAL_SEQUENCE_RNN",
        "LSTM",
        "RNN",
        "OP_UNIDIRECTIONAL_SEQUENCE_LSTM",
        "OP_BIDIRECTIONAL_SEQUENCE_LSTM",
        "OP_UNIDIRECTIONAL_SEQUENCE_RNN",
        "OP_BIDIRECTIONAL_SEQUENCE_RNN",
        "OP_LSTM",
        "OP_RNN",
    }
)
_RECURRENT_MODULE = re.compile(r"torch\.nn\.modules\.rnn\.(LSTM|GRU|RNN)(Cell)?_")


def recurrent_ops(graph: TfliteGraph) -> list[OpInfo]:
    """The ops of recurrent layers: fused sequence ops, and ops named after an nn.LSTM/GRU/RNN(Cell) module."""
    return [
        op
        for op in graph.ops
        if op.kind not in ("QUANTIZE", "DEQUANTIZE")
        and (op.kind in RECURRENT_OPS or _RECURRENT_MODULE.search(op.scope))
    ]


# Ops that do real arithmetic on weights or two activations: never added to a float set for free.
_HEAVY_OPS = frozenset({*WEIGHTED_OPS, "BATCH_MATMUL", "TRANSPOSE_CONV", "EMBEDDING_LOOKUP"})


def stored_weight(graph: TfliteGraph, op: OpInfo) -> int:
    """Index of the tensor holding an op's weights: its weight input, or the int8 input of the DEQUANTIZE
    that feeds it (weight-only variants keep float compute behind an explicit DEQUANTIZE)."""
    index = op.inputs[1]
    for producer in graph.ops:
        if producer.kind == "DEQUANTIZE" and producer.outputs and producer.outputs[0] == index and producer.inputs:
            return producer.inputs[0]
    return index


def with_float_islands(graph: TfliteGraph, float_scopes: frozenset[str], float_io: bool = True) -> frozenset[str]:
    """`float_scopes` plus every connected group of cheap ops (no weights) that only float tensors feed and
    only float ops read: in int8 such a group is an island that costs a QUANTIZE and a DEQUANTIZE at its
    borders and adds rounding noise, and buys nothing.

    Measured on EfficientNet-Lite0 with the stem and first depthwise convolution in float: the input's SUB,
    MUL, PAD and TRANSPOSE in int8 between a float input and a float convolution cost 0.07 ms (p50 0.502x
    the fp32 model instead of 0.494x). `float_io`: the model's inputs and outputs are float (not int8_io).
    """
    if not float_scopes:
        return frozenset()  # full int8: every border is int8 already
    candidates = {op.index: op for op in graph.quantizable_ops() if op.kind not in _HEAVY_OPS}
    producer = {t: op for op in graph.ops for t in op.outputs}
    readers: dict[int, list[OpInfo]] = {}
    for op in graph.ops:
        for t in op.inputs:
            readers.setdefault(t, []).append(op)
    group_of = {index: index for index in candidates}  # union-find over candidates joined by a tensor

    def root(index: int) -> int:
        while group_of[index] != index:
            group_of[index] = group_of[group_of[index]]
            index = group_of[index]
        return index

    for op in candidates.values():
        for t in op.inputs:
            source = producer.get(t)
            if source is not None and source.index in candidates:
                group_of[root(op.index)] = root(source.index)
    groups: dict[int, list[OpInfo]] = {}
    for index, op in candidates.items():
        groups.setdefault(root(index), []).append(op)
    chosen = set(float_scopes)

    def float_tensor_in(t: int, members: set[int]) -> bool:
        if t < 0 or graph.constant(t) is not None:
            return True
        if t in graph.input_tensors:
            return float_io
        source = producer.get(t)
        return source is not None and (source.index in members or source.scope in chosen)

    def read_as_float(t: int, members: set[int]) -> bool:
        if t in graph.output_tensors and not float_io:
            return False
        return all(reader.index in members or reader.scope in chosen for reader in readers.get(t, []))

    grown = True
    while grown:  # a group that turns float can make a neighbouring group's border float
        grown = False
        for ops in groups.values():
            if ops[0].scope in chosen:
                continue
            members = {op.index for op in ops}
            inputs = [t for op in ops for t in op.inputs]
            outputs = [t for op in ops for t in op.outputs]
            if all(float_tensor_in(t, members) for t in inputs) and all(read_as_float(t, members) for t in outputs):
                chosen.update(op.scope for op in ops)
                grown = True
    return frozenset(chosen)


def reconnect_int8_readers(model: bytearray) -> int:
    """Make int8 ops read the int8 tensor behind a dequantized graph output, in place; returns how many inputs.

    With float model outputs, ai-edge-quantizer puts a DEQUANTIZE behind an int8 output tensor and makes the
    float copy the graph's output, but an int8 op that also reads that tensor (a streaming model's next state
    feeding its head, a feature output feeding a classifier) is left reading the float copy, and LiteRT refuses
    the model ("FULLY_CONNECTED ... INT8 != FLOAT32"). This points such inputs back at the int8 tensor.
    """
    import struct

    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    graph = root.Subgraphs(0)
    outputs = {int(t) for t in graph.OutputsAsNumpy()}
    ops = [graph.Operators(i) for i in range(graph.OperatorsLength())]

    def kind(op: Any) -> int:
        code = root.OperatorCodes(op.OpcodeIndex())
        return max(code.BuiltinCode(), code.DeprecatedBuiltinCode())

    def is_int8(t: int) -> bool:
        return t >= 0 and graph.Tensors(t).Type() == schema.TensorType.INT8

    dequantized = {  # float graph output -> the int8 tensor it was dequantized from
        int(op.Outputs(0)): int(op.Inputs(0))
        for op in ops
        if kind(op) == schema.BuiltinOperator.DEQUANTIZE and op.OutputsLength() and int(op.Outputs(0)) in outputs
        and is_int8(int(op.Inputs(0)))
    }  # fmt: skip
    changed = 0
    for op in ops:
        if kind(op) in (schema.BuiltinOperator.DEQUANTIZE, schema.BuiltinOperator.QUANTIZE):
            continue
        if not any(is_int8(int(op.Outputs(k))) for k in range(op.OutputsLength())):
            continue  # a float op reads the float copy, as it should
        start = op._tab.Vector(op._tab.Offset(6))  # noqa: SLF001 - the `inputs` vector, rewritten in place
        for j in range(op.InputsLength()):
            source = dequantized.get(int(op.Inputs(j)))
            if source is not None:
                struct.pack_into("<i", model, start + 4 * j, source)
                changed += 1
    return changed


def writable_tensor(model: bytearray, tensor: int, dtype: Any) -> np.ndarray:
    """A numpy view into `model` (a bytearray holding a .tflite) of a constant tensor's data, for in-place edits.

    Resolved through the raw flatbuffer of subgraph 0 (the parsed `ModelT` may renumber buffers).
    """
    from ai_edge_litert import schema_py_generated as schema

    root = schema.Model.GetRootAs(model, 0)
    buffer = root.Buffers(root.Subgraphs(0).Tensors(tensor).Buffer())
    if buffer.Offset() > 1:  # stored after the flatbuffer (ai-edge-quantizer's large-model layout)
        start = int(buffer.Offset())
        return np.frombuffer(memoryview(model)[start : start + int(buffer.Size())], dtype=dtype)
    raw = buffer.DataAsNumpy()
    if isinstance(raw, int):
        raise ValueError(f"tensor {tensor} holds no data")
    return raw.view(dtype)


def _builtin_name(code: int) -> str:
    from ai_edge_litert import schema_py_generated as schema

    for name, value in vars(schema.BuiltinOperator).items():
        if not name.startswith("_") and value == code:
            return name if name in ("QUANTIZE", "DEQUANTIZE") else f"OP_{name}"
    return f"OP_{code}"
