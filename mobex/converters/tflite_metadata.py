"""TFLite model metadata: what Android's Task Library, MediaPipe and Android Studio read from a .tflite.

The metadata is the published TFLite Metadata flatbuffer (`metadata_schema.fbs`, file identifier
"M001"), built with the `flatbuffers` package and the schema's generated Python classes shipped in
the tflite-support wheel (`tensorflow_lite_support.metadata.metadata_schema_py_generated`). It is
stored the way tflite-support's MetadataPopulator stores it: a model buffer named `TFLITE_METADATA`,
and the associated files (the labels) as a zip archive appended to the flatbuffer, so the .tflite is
also a valid zip. (The populator itself needs a native library, libusb, that is not installed here,
so mobex writes the same layout with the same generated classes; `read_metadata` reads it back.)

What mobex writes, from the recipe: model name, description, version, author, license; per input its
name, description, content (image: colour space; audio: sample rate and channels; else features), the
image normalisation (`NormalizationOptions` mean/std in 0..255 pixel units, so that
`(pixel - mean) / std` is the contract's `(pixel / scale - mean) / std`) and the value range (`Stats`);
per output its name, description and, for classifiers, `labels.txt` as TENSOR_AXIS_LABELS.
`apply_model_contract` also gives the I/O tensors the recipe's names (mobex.converters.tflite_names).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from typing import Any

from mobex.converters.tflite_names import name_io_tensors
from mobex.preprocessing import AudioPreprocessing, ImagePreprocessing, NoPreprocessing, PreprocessingContract

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed: the same model and recipe give the same bytes
MAX_METADATA_BYTES = 16 * 1024 * 1024  # a bound when reading metadata back


@dataclass(frozen=True)
class TfliteMetadata:
    """The recipe's side of the metadata (the model's side, its tensors, comes from the file)."""

    name: str
    version: str
    description: str = ""
    author: str = ""
    license: str = ""
    task: str = "other"
    labels: list[str] | None = None
    preprocessing: PreprocessingContract = field(default_factory=NoPreprocessing)
    input_descriptions: dict[str, str] = field(default_factory=dict)
    output_descriptions: dict[str, str] = field(default_factory=dict)
    class_output: str | None = None  # the output the labels describe ([model].class_output; else the first)


def metadata_from_recipe(recipe: Any) -> TfliteMetadata:
    """The metadata a recipe (mobex.recipe.Recipe) gives."""
    return TfliteMetadata(
        name=recipe.model.name,
        version=recipe.model.version,
        description=recipe.model.description,
        author=recipe.model.author,
        license=recipe.model.license,
        task=recipe.model.task,
        labels=recipe.labels(),
        preprocessing=recipe.preprocessing,
        input_descriptions={i.name: i.description for i in recipe.inputs if i.description},
        output_descriptions={o.name: o.description for o in recipe.outputs if o.description},
        class_output=recipe.model.class_output,
    )


def _fb():  # noqa: ANN202 - the generated schema module
    from tensorflow_lite_support.metadata import metadata_schema_py_generated

    return metadata_schema_py_generated


def _stats(lo: list[float], hi: list[float]) -> Any:
    stats = _fb().StatsT()
    stats.min, stats.max = list(lo), list(hi)
    return stats


def _input_metadata(name: str, meta: TfliteMetadata, target: str | None) -> tuple[Any, str]:
    """TensorMetadataT of one input and the parser version its fields need."""
    fb = _fb()
    contract = meta.preprocessing
    tensor = fb.TensorMetadataT()
    tensor.name = name
    tensor.description = meta.input_descriptions.get(name, "") or contract.description
    content = fb.ContentT()
    version = "1.0.0"
    ranges = contract.value_ranges()
    applies = name == target  # the input the image/audio contract describes
    if isinstance(contract, ImagePreprocessing) and applies:
        props = fb.ImagePropertiesT()
        spaces = {"RGB": fb.ColorSpaceType.RGB, "L": fb.ColorSpaceType.GRAYSCALE}
        # The older contracts (no scale) leave `color` at its default: only a full contract names the colours.
        unknown = fb.ColorSpaceType.UNKNOWN
        props.colorSpace = spaces.get(contract.color, unknown) if contract.describes_pixels else unknown
        content.contentPropertiesType, content.contentProperties = fb.ContentProperties.ImageProperties, props
        if contract.scale is not None:
            norm = fb.NormalizationOptionsT()
            norm.mean = [m * contract.scale for m in contract.per_channel("mean")]
            norm.std = [s * contract.scale for s in contract.per_channel("std")]
            unit = fb.ProcessUnitT()
            unit.optionsType, unit.options = fb.ProcessUnitOptions.NormalizationOptions, norm
            tensor.processUnits = [unit]
            a, b = contract.pixel_mapping()
            tensor.stats = _stats(b, [255.0 * ai + bi for ai, bi in zip(a, b, strict=True)])
    elif isinstance(contract, AudioPreprocessing) and applies:
        props = fb.AudioPropertiesT()
        props.sampleRate, props.channels = contract.sample_rate, 1 if contract.mono else 0
        content.contentPropertiesType, content.contentProperties = fb.ContentProperties.AudioProperties, props
        version = "1.3.0"  # AudioProperties: "Added in: 1.3.0"
    else:
        content.contentPropertiesType = fb.ContentProperties.FeatureProperties
        content.contentProperties = fb.FeaturePropertiesT()
    if tensor.stats is None and ranges is not None:
        pair = ranges.get(name) if isinstance(ranges, dict) else ranges
        if pair is not None:
            tensor.stats = _stats([pair[0]], [pair[1]])
    tensor.content = content
    return tensor, version


def _output_metadata(name: str, meta: TfliteMetadata, scores: bool) -> Any:
    fb = _fb()
    tensor = fb.TensorMetadataT()
    tensor.name = name
    classifier = meta.task == "classification" and meta.labels is not None and scores
    default = f"one float score per class of {LABELS_FILE} ({len(meta.labels)} classes)" if classifier else ""
    tensor.description = meta.output_descriptions.get(name, "") or default
    content = fb.ContentT()
    content.contentPropertiesType = fb.ContentProperties.FeatureProperties
    content.contentProperties = fb.FeaturePropertiesT()
    tensor.content = content
    if classifier:
        labels = fb.AssociatedFileT()
        labels.name, labels.type = LABELS_FILE, fb.AssociatedFileType.TENSOR_AXIS_LABELS
        labels.description = "class labels, one per line, in the order of the scores"
        tensor.associatedFiles = [labels]
    return tensor


def metadata_buffer(meta: TfliteMetadata, input_names: list[str], output_names: list[str]) -> bytes:
    """The ModelMetadata flatbuffer ("M001") for tensors of these names, in subgraph order."""
    import flatbuffers

    fb = _fb()
    model = fb.ModelMetadataT()
    model.name, model.version = meta.name, meta.version
    model.description = meta.description or meta.name
    model.author, model.license = meta.author, meta.license
    graph = fb.SubGraphMetadataT()
    target = meta.preprocessing.input_name(input_names)
    pairs = [_input_metadata(n, meta, target) for n in input_names]
    graph.inputTensorMetadata = [t for t, _ in pairs]
    scores = meta.class_output or (output_names[0] if output_names else None)
    graph.outputTensorMetadata = [_output_metadata(n, meta, n == scores) for n in output_names]
    model.subgraphMetadata = [graph]
    # The largest "Added in" version among the fields written (metadata_schema.fbs history).
    model.minParserVersion = max((v for _, v in pairs), key=lambda v: tuple(map(int, v.split("."))), default="1.0.0")
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), METADATA_IDENTIFIER)
    return bytes(builder.Output())


def _files(meta: TfliteMetadata) -> dict[str, bytes]:
    if meta.task == "classification" and meta.labels is not None:
        return {LABELS_FILE: ("\n".join(meta.labels) + "\n").encode("utf-8")}
    return {}


def unpack_model(model_bytes: bytes) -> Any:
    """A `ModelT` of the file, with buffers stored after the flatbuffer (offset/size, as ai-edge-quantizer
    writes them) read back inline, so that packing it again keeps every weight."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))
    for buffer in model.buffers or []:
        if buffer.offset and buffer.offset > 1:
            end = buffer.offset + buffer.size
            if end > len(model_bytes):
                raise ValueError(f"a buffer of the model lies past the end of the file ({end} > {len(model_bytes)})")
            buffer.data = np.frombuffer(model_bytes, np.uint8, count=buffer.size, offset=buffer.offset).copy()
            buffer.offset, buffer.size = 0, 0
    return model


def apply_model_contract(model_bytes: bytes, meta: TfliteMetadata | None, signature_key: str | None = None) -> bytes:
    """The model with the recipe's I/O tensor names and (when `meta` is given) mobex's metadata and labels."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = unpack_model(flatbuffer_only(model_bytes))
    name_io_tensors(model, signature_key)
    if meta is None:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    graph = model.subgraphs[0]
    names = {t: _text(graph.tensors[t].name) for t in list(graph.inputs) + list(graph.outputs)}
    buffer = metadata_buffer(meta, [names[t] for t in graph.inputs], [names[t] for t in graph.outputs])
    return _with_metadata(model, buffer, _files(meta))


def carry_model_contract(source_bytes: bytes, model_bytes: bytes, signature_key: str | None = None) -> bytes:
    """`model_bytes` (e.g. a quantized variant) with the names, metadata and files that `source_bytes` carries."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = unpack_model(flatbuffer_only(model_bytes))
    name_io_tensors(model, signature_key)
    buffer = metadata_bytes(source_bytes)
    if buffer is None:
        return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return _with_metadata(model, buffer, associated_files(source_bytes))


def _with_metadata(model: Any, buffer: bytes, files: dict[str, bytes]) -> bytes:
    """Put `buffer` in the model's TFLITE_METADATA entry (replacing one), pack, append the files as a zip."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    entry = next((m for m in model.metadata or [] if _text(m.name) == METADATA_NAME), None)
    data = schema.BufferT()
    data.data = np.frombuffer(buffer, np.uint8)
    if entry is None:
        model.buffers.append(data)
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    else:
        model.buffers[entry.buffer] = data
    packed = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    if not files:
        return packed
    out = io.BytesIO(packed)
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a") as zf:  # offsets from the start of the file, as MetadataPopulator writes
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            zf.writestr(info, files[name], compress_type=zipfile.ZIP_STORED)
    return out.getvalue()


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value or "")


def flatbuffer_only(model_bytes: bytes) -> bytes:
    """The model without an appended zip of associated files (the flatbuffer ignores trailing bytes, but
    re-packing it must not carry a stale archive along)."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            starts = [i.header_offset for i in zf.infolist()]
    except zipfile.BadZipFile:
        return model_bytes
    return model_bytes[: min(starts)] if starts else model_bytes


def metadata_bytes(model_bytes: bytes) -> bytes | None:
    """The raw TFLITE_METADATA buffer of a model, or None."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAs(model_bytes, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name().decode("utf-8") == METADATA_NAME:
            data = model.Buffers(entry.Buffer()).DataAsNumpy()
            if not hasattr(data, "tobytes") or data.size > MAX_METADATA_BYTES:
                return None
            return data.tobytes()
    return None


def associated_files(model_bytes: bytes, limit: int = MAX_METADATA_BYTES) -> dict[str, bytes]:
    """The files packed after the flatbuffer (name -> bytes); entries larger than `limit` are refused."""
    try:
        with zipfile.ZipFile(io.BytesIO(model_bytes)) as zf:
            infos = zf.infolist()
            if any(i.file_size > limit for i in infos) or len(infos) > 64:
                raise ValueError("the model's associated files are larger or more than mobex reads back")
            return {i.filename: zf.read(i) for i in infos}
    except zipfile.BadZipFile:
        return {}


def read_metadata(model_bytes: bytes) -> dict[str, Any] | None:
    """The metadata as plain values (what an app or the Task Library reads), or None when there is none."""
    buffer = metadata_bytes(model_bytes)
    if buffer is None:
        return None
    fb = _fb()
    if buffer[4:8] != METADATA_IDENTIFIER:
        raise ValueError(f"the TFLITE_METADATA buffer has identifier {buffer[4:8]!r}, not {METADATA_IDENTIFIER!r}")
    meta = fb.ModelMetadataT.InitFromObj(fb.ModelMetadata.GetRootAs(buffer, 0))
    (graph,) = meta.subgraphMetadata
    return {
        "name": _text(meta.name),
        "description": _text(meta.description),
        "version": _text(meta.version),
        "author": _text(meta.author),
        "license": _text(meta.license),
        "min_parser_version": _text(meta.minParserVersion),
        "inputs": [_tensor_dict(t) for t in graph.inputTensorMetadata or []],
        "outputs": [_tensor_dict(t) for t in graph.outputTensorMetadata or []],
        "files": {k: v for k, v in associated_files(model_bytes).items()},
    }


def _tensor_dict(tensor: Any) -> dict[str, Any]:
    fb = _fb()
    out: dict[str, Any] = {"name": _text(tensor.name), "description": _text(tensor.description)}
    props = tensor.content.contentProperties if tensor.content is not None else None
    if isinstance(props, fb.ImagePropertiesT):
        spaces = {v: k for k, v in vars(fb.ColorSpaceType).items() if not k.startswith("_")}
        out["content"] = {"image": {"color_space": spaces.get(props.colorSpace, "UNKNOWN")}}
    elif isinstance(props, fb.AudioPropertiesT):
        out["content"] = {"audio": {"sample_rate": props.sampleRate, "channels": props.channels}}
    else:
        out["content"] = {"feature": {}}
    for unit in tensor.processUnits or []:
        if isinstance(unit.options, fb.NormalizationOptionsT):
            out["normalization"] = {
                "mean": [float(x) for x in unit.options.mean],
                "std": [float(x) for x in unit.options.std],
            }
    if tensor.stats is not None:
        out["range"] = {"min": [float(x) for x in tensor.stats.min], "max": [float(x) for x in tensor.stats.max]}
    files = tensor.associatedFiles or []
    types = {v: k for k, v in vars(fb.AssociatedFileType).items() if not k.startswith("_")}
    out["associated_files"] = [{"name": _text(f.name), "type": types.get(f.type, "UNKNOWN")} for f in files]
    return out
