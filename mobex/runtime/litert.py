"""LiteRT: run a .tflite file with ai-edge-litert's interpreter and XNNPACK (the kernels Android uses on CPU).

Every runner takes a feed `{input name: numpy array}` and returns the model's outputs as a list of
numpy arrays in *torch output order* (see mobex.runtime.torch_model). Parity compares the two lists
position by position, and latency times `run`, so `run` does no set-up work: the interpreter, tensor
indices and quantization parameters are resolved once in `__init__`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mobex.artifacts import QuantParams, TensorSpec
from mobex.errors import DataError, UsageError
from mobex.runtime.feeds import missing_input

# litert-torch names the only signature of a converted model like TF SavedModels do; Android's
# `Interpreter.runSignature` and LiteRT's CompiledModel pick it by default.
SIGNATURE_KEY = "serving_default"

_QUANTIZED_IO_DTYPES = ("int8", "uint8", "int16")


@dataclass(frozen=True)
class TfliteIO:
    """The I/O contract of one signature of a .tflite file, inputs in call order, outputs in torch order."""

    signature: str
    subgraph: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    input_indices: list[int]
    output_indices: list[int]


def _spec(name: str, detail: dict) -> TensorSpec:
    dtype = np.dtype(detail["dtype"]).name
    scale, zero_point = detail.get("quantization", (0.0, 0))
    quant = None
    if dtype in _QUANTIZED_IO_DTYPES and scale:
        quant = QuantParams(scale=float(scale), zero_point=int(zero_point))
    return TensorSpec(name=name, shape=tuple(int(d) for d in detail["shape"]), dtype=dtype, quantization=quant)


def _ordered(sig_details: dict[str, dict], subgraph_order: list[int]) -> list[tuple[str, dict]]:
    """Signature entries sorted by their tensor's position in the subgraph's input/output list.

    The signature map itself is keyed by name (LiteRT lists it alphabetically); the subgraph's
    tensor list is the order litert-torch lowered them in, i.e. call order for inputs and the
    torch return order for outputs, and ai-edge-quantizer keeps that order when it rewrites a model.
    """
    position = {index: i for i, index in enumerate(subgraph_order)}
    items = list(sig_details.items())
    if all(d["index"] in position for _, d in items):
        items.sort(key=lambda kv: position[kv[1]["index"]])
    return items


def _subgraph_io_order(path: Path, subgraph: int) -> tuple[list[int], list[int]]:
    """Input and output tensor indices of a subgraph, in order, read from the flatbuffer itself.

    The interpreter's Python API only exposes subgraph 0's order; models with several signatures
    may put `serving_default` elsewhere. The file is memory-mapped, so weights are not read.
    """
    import mmap

    from ai_edge_litert import schema_py_generated as schema

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        graph = schema.Model.GetRootAs(buf, 0).Subgraphs(subgraph)
        return [int(i) for i in graph.InputsAsNumpy()], [int(i) for i in graph.OutputsAsNumpy()]


def read_tflite_io(interpreter: Any, path: Path) -> TfliteIO:
    """Names, shapes, dtypes and int8 scale/zero_point of the main signature of a loaded model file."""
    signatures = interpreter.get_signature_list()
    if not signatures:  # a model without signature defs: fall back to raw tensor names
        ins = interpreter.get_input_details()
        outs = interpreter.get_output_details()
        return TfliteIO(
            signature="",
            subgraph=0,
            inputs=[_spec(d["name"], d) for d in ins],
            outputs=[_spec(d["name"], d) for d in outs],
            input_indices=[d["index"] for d in ins],
            output_indices=[d["index"] for d in outs],
        )
    key = SIGNATURE_KEY if SIGNATURE_KEY in signatures else next(iter(signatures))
    runner = interpreter.get_signature_runner(key)
    subgraph = int(getattr(runner, "_subgraph_index", 0))
    if subgraph == 0:
        in_order = [d["index"] for d in interpreter.get_input_details()]
        out_order = [d["index"] for d in interpreter.get_output_details()]
    else:
        in_order, out_order = _subgraph_io_order(Path(path), subgraph)
    ins = _ordered(runner.get_input_details(), in_order)
    outs = _ordered(runner.get_output_details(), out_order)
    return TfliteIO(
        signature=key,
        subgraph=subgraph,
        inputs=[_spec(n, d) for n, d in ins],
        outputs=[_spec(n, d) for n, d in outs],
        input_indices=[d["index"] for _, d in ins],
        output_indices=[d["index"] for _, d in outs],
    )


def load_tflite_io(path: Path) -> TfliteIO:
    """`read_tflite_io` for a file (used by the converter and quantizer to describe what they wrote)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    return read_tflite_io(interpreter, path)


@dataclass(frozen=True)
class DelegatedOp:
    index: int
    op: str
    tensor: str  # the name of its first output tensor (litert-torch: the torch module path)
    partition: int | None  # the XNNPACK partition that runs it, None: a LiteRT reference kernel

    def to_dict(self) -> dict:
        kernel = "XNNPACK" if self.partition is not None else "reference"
        return {
            "index": self.index,
            "op": self.op,
            "tensor": self.tensor,
            "kernel": kernel,
            "partition": self.partition,
        }


@dataclass(frozen=True)
class Delegation:
    """Which ops of a model XNNPACK runs, in how many partitions, and which run on LiteRT's reference kernels."""

    ops: tuple[DelegatedOp, ...]
    partitions: int

    @property
    def reference_ops(self) -> list[DelegatedOp]:
        return [op for op in self.ops if op.partition is None]

    def to_dict(self) -> dict:
        """The report's `delegation` (docs/report-schema.md)."""
        by_kind: dict[str, dict[str, int]] = {}
        for op in self.ops:
            kinds = by_kind.setdefault(op.op, {"xnnpack": 0, "reference": 0})
            kinds["reference" if op.partition is None else "xnnpack"] += 1
        return {
            "delegate": "XNNPACK",
            "partitions": self.partitions,
            "ops": len(self.ops),
            "delegated_ops": len(self.ops) - len(self.reference_ops),
            "reference_ops": len(self.reference_ops),
            "by_op": by_kind,
            "per_op": [op.to_dict() for op in self.ops],
        }


def delegation_of(nodes: list[dict], tensor_names: dict[int, str]) -> Delegation:
    """Recover each op's partition from the interpreter's node list.

    After XNNPACK takes over, the list holds the model's own ops, then one DELEGATE node per partition whose
    inputs and outputs are the partition's boundary tensors. Walking back from a DELEGATE node's outputs through
    the producing ops, and stopping at its inputs, visits exactly the ops of that partition.
    """
    producer: dict[int, dict] = {}
    for node in nodes:
        if node["op_name"] != "DELEGATE":
            for t in node["outputs"]:
                producer[int(t)] = node
    partition_of: dict[int, int] = {}
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    for k, node in enumerate(delegates):
        boundary = {int(t) for t in node["inputs"]}
        stack = [int(t) for t in node["outputs"]]
        while stack:
            tensor = stack.pop()
            op = producer.get(tensor)
            if tensor in boundary or op is None or op["index"] in partition_of:
                continue
            partition_of[op["index"]] = k
            stack.extend(int(t) for t in op["inputs"] if int(t) >= 0)
    ops = tuple(
        DelegatedOp(
            int(n["index"]),
            str(n["op_name"]),
            tensor_names.get(int(n["outputs"][0]), "") if len(n["outputs"]) else "",
            partition_of.get(n["index"]),
        )
        for n in nodes
        if n["op_name"] != "DELEGATE"
    )
    return Delegation(ops, len(delegates))


class TfliteRunner:
    """Runs a .tflite model with the LiteRT interpreter and its default XNNPACK delegate (Android's CPU path).

    Feeds are float (or integer for id inputs) as in the recipe; int8/uint8 inputs are quantized here
    with their scale/zero_point, int8 outputs dequantized, float16 outputs widened, so `run` returns
    float32 for every float output and the stored dtype for integer outputs (e.g. int32 ids).
    Integer feeds are cast to the model's dtype (litert-torch stores int64 inputs as int32).

    `run` uses `set_tensor`/`invoke`/`get_tensor` on pre-resolved indices: the signature runner
    resizes and re-allocates tensors on every call (measured: ~1.5 us more per call). Only when the
    main signature is not subgraph 0 (multi-signature files) does `run` go through the signature runner.
    """

    def __init__(self, path: Path, num_threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.path = Path(path)
        if not self.path.is_file():
            raise UsageError(f"no TFLite model at {self.path}")
        self.num_threads = num_threads
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._interpreter.allocate_tensors()
        io = read_tflite_io(self._interpreter, self.path)
        self.signature = io.signature
        self.inputs: list[TensorSpec] = io.inputs
        self.outputs: list[TensorSpec] = io.outputs
        self._input_names = [s.name for s in io.inputs]
        self._in = [
            (s.name, index, np.dtype(s.dtype), s.quantization, _qrange(s.dtype))
            for s, index in zip(io.inputs, io.input_indices, strict=True)
        ]
        self._out = [
            (index, s.quantization, np.dtype(s.dtype)) for s, index in zip(io.outputs, io.output_indices, strict=True)
        ]
        self._signature_runner = self._interpreter.get_signature_runner(io.signature) if io.subgraph != 0 else None

    def delegate_partitions(self) -> int | None:
        """How many XNNPACK partitions the graph runs as (1: all of it in XNNPACK), None if unknown.

        Ops XNNPACK has no kernel for in their precision (int8 HARD_SWISH, for one) run on LiteRT's
        reference kernels between partitions, each switch costing a copy: a digits CNN with 7 int8
        HARD_SWISH runs as 8 partitions in 42 us, against 11 us in fp32 (1 partition).
        """
        delegation = self.delegation()
        return None if delegation is None else delegation.partitions

    def delegation(self) -> Delegation | None:
        """Per op of the model, whether XNNPACK runs it (and in which partition) or LiteRT's reference kernel
        does; None when this LiteRT build does not expose its nodes."""
        try:
            nodes = self._interpreter._get_ops_details()  # noqa: SLF001 - the only view of the delegated plan
            names = {d["index"]: d["name"] for d in self._interpreter.get_tensor_details()}
        except Exception:  # noqa: BLE001 - a LiteRT build without it: say unknown
            return None
        return delegation_of(nodes, names)

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """One inference; returns outputs in torch output order (see class docstring for dtypes)."""
        arrays = {}
        for name, index, dtype, quant, qrange in self._in:
            try:
                x = feed[name]
            except KeyError:
                raise missing_input(name, feed, self._input_names) from None
            if quant is not None:
                x = np.clip(np.rint(np.asarray(x, np.float32) / quant.scale) + quant.zero_point, *qrange)
            x = np.ascontiguousarray(x, dtype=dtype)
            if self._signature_runner is not None:
                arrays[name] = x
                continue
            try:
                self._interpreter.set_tensor(index, x)
            except ValueError as e:
                spec = next(s for s in self.inputs if s.name == name)
                raise DataError(
                    f"input {name!r} has shape {list(x.shape)}, the TFLite model takes {list(spec.shape)}: {e}"
                ) from None
        if self._signature_runner is not None:
            result = self._signature_runner(**arrays)
            raw = [result[s.name] for s in self.outputs]
        else:
            self._interpreter.invoke()
            raw = [self._interpreter.get_tensor(index) for index, _, _ in self._out]
        outs = []
        for y, (_, quant, dtype) in zip(raw, self._out, strict=True):
            if quant is not None:
                y = (y.astype(np.float32) - np.float32(quant.zero_point)) * np.float32(quant.scale)
            elif dtype.kind == "f" and dtype != np.float32:
                y = y.astype(np.float32)
            outs.append(y)
        return outs


def _qrange(dtype: str) -> tuple[int, int]:
    if dtype in _QUANTIZED_IO_DTYPES:
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    return 0, 0
