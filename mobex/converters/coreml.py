"""PyTorch -> Core ML ML Program (.mlpackage) with coremltools, on any host.

coremltools converts and saves on Linux but cannot load or run a model there, so everything here
works from the saved spec: the I/O contract is read back from the package, never from predictions.
Conversion tries torch.export first (the path coremltools is moving to) and falls back to
torch.jit.trace; `coreml_shims` patches the op converters coremltools 9.0 gets wrong under torch 2.13.

Packages are written reproducibly: the conversion date coremltools stamps into the metadata and
the ExecuTorch debug map it drops next to the model are removed, and the random item identifiers
in Manifest.json are replaced by name-based UUIDs, so the same model and recipe give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mobex.artifacts import ExportedVariant, TensorSpec, path_size
from mobex.converters import op_location
from mobex.converters.coreml_detection import CONFIDENCE, COORDINATES, DetectionOptions, plan_detection, vision_module
from mobex.converters.coreml_io import plan_interface
from mobex.errors import ConversionError, UsageError
from mobex.preprocessing import NoPreprocessing, PreprocessingContract
from mobex.runtime.coremltools_import import import_coremltools

if TYPE_CHECKING:
    import torch

LABELS_KEY = "mobex.labels"
"""User-defined metadata key holding the class labels as a JSON list (no `classify` op is added)."""

_CONVERSION_DATE_KEY = "com.github.apple.coremltools.conversion_date"
_DEBUG_MAP_FILE = "executorch_debug_handle_mapping.json"
_MANIFEST_NAMESPACE = uuid.UUID("6d6f6265-782d-636f-7265-6d6c2d706b67")  # fixed: ids stay stable

_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "iOS26")

# Core ML ArrayFeatureType.ArrayDataType -> numpy dtype name.
_ARRAY_DTYPES = {65568: "float32", 65552: "float16", 65600: "float64", 131104: "int32", 131080: "int8"}


@dataclass
class CoreMLMetadata:
    """What an iOS developer sees in Xcode's model view, plus mobex's own keys."""

    name: str
    version: str
    description: str = ""
    author: str = ""
    license: str = ""
    input_descriptions: dict[str, str] = field(default_factory=dict)
    output_descriptions: dict[str, str] = field(default_factory=dict)
    labels: list[str] | None = None
    extra: dict[str, str] = field(default_factory=dict)
    # The native interface (mobex.converters.coreml_io): image input from an image contract, classifier outputs.
    preprocessing: PreprocessingContract = field(default_factory=NoPreprocessing)
    task: str = "other"
    image_input: bool = True
    classifier: bool | None = None  # None: for image classifiers only (mobex.converters.coreml_io)
    detection: DetectionOptions | None = None  # task = "detection": the Vision layout (coreml_detection)


def resolve_target(name: str) -> Any:
    """Map "iOS15".."iOS18"/"iOS26" to `ct.target`; ML Programs need iOS15 or later."""
    import coremltools as ct

    canonical = {t.lower(): t for t in _TARGETS}.get(name.strip().lower())
    if canonical is None or not hasattr(ct.target, canonical):
        known = ", ".join(t for t in _TARGETS if hasattr(ct.target, t))
        raise UsageError(
            f"unknown Core ML deployment target {name!r}",
            hint=f"use one of {known} (ML Programs need iOS15 or later)",
        )
    return getattr(ct.target, canonical)


def convert_coreml(
    model: torch.nn.Module,
    example_inputs: dict[str, torch.Tensor],
    out_path: Path,
    *,
    precision: Literal["fp32", "fp16"],
    deployment_target: str = "iOS16",
    output_names: list[str] | None = None,
    metadata: CoreMLMetadata,
) -> ExportedVariant:
    """Convert `model` (called as `model(*example_inputs.values())`) to an ML Program at `out_path`.

    Input names are the dict keys; float inputs stay float32 I/O even with fp16 compute (apps feed
    float32), integer inputs become int32 (Core ML has no int64 I/O). The model is put in eval mode.
    """
    import numpy as np
    import torch

    from mobex.converters import coreml_shims

    ct = import_coremltools()  # without the converters mobex never uses (~12 s less)
    started = time.perf_counter()
    out_path = Path(out_path)
    if out_path.suffix != ".mlpackage":
        raise UsageError(f"Core ML output path must end in .mlpackage: {out_path}")
    if precision not in ("fp32", "fp16"):
        raise UsageError(f"unknown Core ML precision {precision!r}", hint="use 'fp32' or 'fp16'")
    target = resolve_target(deployment_target)
    deployment_target = target.name
    if not example_inputs:
        raise UsageError("convert_coreml needs at least one example input")

    coreml_shims.install_shims()
    notes: list[str] = [f"deployment target {deployment_target}, {precision} compute"]
    ct_inputs = []
    for name, tensor in example_inputs.items():
        if tensor.is_floating_point():
            ct_inputs.append(ct.TensorType(name=name, shape=tuple(tensor.shape), dtype=np.float32))
            if tensor.dtype != torch.float32:
                notes.append(f"input {name!r} is {_dtype_name(tensor)} in torch, float32 in Core ML")
        elif tensor.dtype.is_complex:
            raise UsageError(f"input {name!r} is complex ({tensor.dtype}); Core ML has no complex I/O")
        else:
            ct_inputs.append(ct.TensorType(name=name, shape=tuple(tensor.shape), dtype=np.int32))
            if tensor.dtype != torch.int32:
                notes.append(
                    f"input {name!r} is {_dtype_name(tensor)} in torch, declared int32 in Core ML "
                    f"(Core ML has no {_dtype_name(tensor)} I/O): feed int32"
                )

    model = model.eval()
    args = tuple(example_inputs.values())
    with torch.no_grad():
        reference_outputs = _flat_tensors(model(*args))
    if output_names is None:
        output_names = [f"output_{i}" for i in range(len(reference_outputs))]
    elif len(output_names) != len(reference_outputs):
        raise UsageError(
            f"{len(output_names)} output names given ({', '.join(output_names)}) but the model returns "
            f"{len(reference_outputs)} tensors",
            hint="give one name per returned tensor, in order",
        )
    ct_outputs = [
        ct.TensorType(name=n, dtype=np.float32 if t.is_floating_point() else np.int32)
        for n, t in zip(output_names, reference_outputs, strict=True)
    ]
    interface = plan_interface(
        metadata.preprocessing,
        example_inputs,
        task=metadata.task,
        labels=metadata.labels,
        output_count=len(reference_outputs),
        image_input=metadata.image_input,
        classifier=metadata.classifier,
    )
    detection = plan_detection(
        metadata.detection if metadata.task == "detection" else None,
        example_inputs,
        output_names,
        reference_outputs,
        image_input=interface.image_input if interface.image is not None else None,
        labels=metadata.labels,
    )
    if detection is not None:  # Vision's confidence / coordinates in place of the recipe's outputs
        model = vision_module(model, detection, output_names)
        ct_outputs = [ct.TensorType(name=n, dtype=np.float32) for n in (CONFIDENCE, COORDINATES)]
        notes += detection.notes()
    model, interface_notes = interface.apply(model, example_inputs, ct_inputs)
    notes += interface_notes

    convert_kwargs = dict(
        inputs=ct_inputs,
        outputs=ct_outputs,
        convert_to="mlprogram",
        minimum_deployment_target=target,
        compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32,
        skip_model_load=True,
        classifier_config=interface.classifier_config(),
    )
    errors: dict[str, str] = {}
    mlmodel = None
    for path_name, make_source in (
        ("torch.export", lambda: torch.export.export(model, args).run_decompositions({})),
        ("torch.jit.trace", lambda: torch.jit.trace(model, args)),
    ):
        coreml_shims.reset_fired()
        try:
            with torch.no_grad():
                source = make_source()
            mlmodel = ct.convert(source, **convert_kwargs)
        except Exception as exc:  # noqa: BLE001 - any converter failure means "try the next path"
            errors[path_name] = f"{type(exc).__name__}: {_first_line(exc)}"
            continue
        notes.insert(0, f"converted via {path_name}")
        if errors:
            notes.append(
                "torch.export failed (" + errors["torch.export"] + "); the trace keeps only the branches "
                "the example inputs took through any data-dependent Python control flow"
            )
        shims = sorted(coreml_shims.fired())
        if shims:
            notes.append("coremltools 9.0 shims used: " + ", ".join(shims))
        break
    if mlmodel is None:
        summary = "; ".join(f"{k}: {v}" for k, v in errors.items())
        located = op_location.describe(model, args, summary)  # the op and the module path that calls it
        where = f" ({located[0]})" if located else ""
        raise ConversionError(
            f"coremltools could not convert the model{where} by either path ({summary})",
            hint=(f"{located[1]}; " if located else "")
            + "see the shims in mobex/converters/coreml_shims.py; an unsupported op may need a new one",
        )

    descriptions = interface.output_descriptions(metadata.output_descriptions, output_names)
    if detection is not None:
        descriptions = detection.output_descriptions()
    apply_metadata(mlmodel, replace(metadata, output_descriptions=descriptions))
    mlmodel.user_defined_metadata.update(interface.metadata())
    if detection is not None:
        mlmodel.user_defined_metadata.update(detection.metadata())
    save_package(mlmodel, out_path)
    notes.append("package made reproducible: conversion date dropped, manifest ids derived from content")
    return package_variant(out_path, precision, notes, started)


def package_variant(path: Path, quantization: str, notes: list[str], started: float) -> ExportedVariant:
    """A saved .mlpackage as a variant: its I/O read back from the package, its size, the time since `started`."""
    inputs, outputs = read_io(path)
    return ExportedVariant(
        target="coreml",
        platform="ios",
        quantization=quantization,
        path=path,
        inputs=inputs,
        outputs=outputs,
        size_bytes=path_size(path),
        seconds=time.perf_counter() - started,
        notes=notes,
    )


def apply_metadata(mlmodel: Any, metadata: CoreMLMetadata) -> None:
    """Fill the Model.proto metadata fields and mobex's user-defined keys (labels as JSON)."""
    mlmodel.short_description = metadata.description or metadata.name
    mlmodel.version = metadata.version
    mlmodel.author = metadata.author
    mlmodel.license = metadata.license
    spec_inputs = {i.name for i in mlmodel.get_spec().description.input}
    spec_outputs = {o.name for o in mlmodel.get_spec().description.output}
    for kind, descriptions, names, target in (
        ("input", metadata.input_descriptions, spec_inputs, mlmodel.input_description),
        ("output", metadata.output_descriptions, spec_outputs, mlmodel.output_description),
    ):
        for name, text in descriptions.items():
            if name not in names:
                raise UsageError(f"metadata describes {kind} {name!r}, but the model's {kind}s are {sorted(names)}")
            target[name] = text
    user = mlmodel.user_defined_metadata
    user["mobex.name"] = metadata.name
    if metadata.labels is not None:
        user[LABELS_KEY] = json.dumps(list(metadata.labels), ensure_ascii=False)
    for key, value in metadata.extra.items():
        if not isinstance(value, str):
            raise UsageError(f"Core ML user metadata must be strings: {key!r} is {type(value).__name__}")
        user[key] = value
    if _CONVERSION_DATE_KEY in user:
        del user[_CONVERSION_DATE_KEY]


def save_package(mlmodel: Any, out_path: Path) -> None:
    """Save next to `out_path`, make it reproducible, then swap it into place in one rename."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.stem}.{uuid.uuid4().hex[:8]}.tmp.mlpackage")
    try:
        mlmodel.save(str(tmp))
        make_reproducible(tmp)
        if out_path.exists():
            old = out_path.with_name(f".{out_path.stem}.{uuid.uuid4().hex[:8]}.old")
            out_path.rename(old)
            tmp.rename(out_path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def wrap_nms(program: Path, out_path: Path, layout: Any) -> None:
    """Write `out_path`: the NMS pipeline of a Vision-layout ML program (coreml_detection.nms_pipeline)."""
    from mobex.converters.coreml_detection import nms_pipeline

    save_package(nms_pipeline(Path(program), layout), out_path)


def make_reproducible(package: Path) -> None:
    """Drop the ExecuTorch debug map and give Manifest.json item ids derived from the package content.

    The debug map (written by `MLModel.save` for torch.export sources) is not listed in the manifest
    and only serves ExecuTorch. coremltools' own loader treats item ids as opaque keys; name-based
    (version 5) UUIDs keep the RFC 4122 form Core ML writes, so Xcode sees an ordinary package.
    """
    debug_map = package / _DEBUG_MAP_FILE
    if debug_map.exists():
        debug_map.unlink()
    _serialize_spec_deterministically(package)
    manifest_path = package / "Manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entries = manifest.get("itemInfoEntries", {})
    content = hashlib.sha256()
    for file in sorted(p for p in (package / "Data").rglob("*") if p.is_file()):
        content.update(file.relative_to(package).as_posix().encode() + b"\0" + file.read_bytes())
    renamed = {
        old: str(uuid.uuid5(_MANIFEST_NAMESPACE, f"{content.hexdigest()}:{item['author']}/{item['path']}"))
        for old, item in entries.items()
    }
    manifest["itemInfoEntries"] = {renamed[old]: item for old, item in entries.items()}
    if "rootModelIdentifier" in manifest:
        manifest["rootModelIdentifier"] = renamed[manifest["rootModelIdentifier"]]
    manifest_path.write_text(json.dumps(manifest, indent=4, sort_keys=True) + "\n")


def _serialize_spec_deterministically(package: Path) -> None:
    """Re-write model.mlmodel with protobuf map fields in sorted order.

    coremltools fills map fields (op attributes, metadata) from Python dicts and sets, whose order
    depends on the process's hash seed: the same model converted in two processes gave two
    different byte strings of the same spec. Deterministic serialization sorts map keys.
    """
    from coremltools.proto import Model_pb2

    for spec_path in (package / "Data").rglob("*.mlmodel"):
        spec = Model_pb2.Model()
        spec.ParseFromString(spec_path.read_bytes())
        spec_path.write_bytes(spec.SerializeToString(deterministic=True))


def read_io(package: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs as the saved package declares them (names, shapes, dtypes). Optional inputs (an NMS
    pipeline's threshold overrides) are left out: the manifest's `detection` entry names them."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    return (
        [_tensor_spec(f) for f in spec.description.input if not f.type.isOptional],
        [_tensor_spec(f) for f in spec.description.output],
    )


def _tensor_spec(feature: Any) -> TensorSpec:
    kind = feature.type.WhichOneof("Type")
    if kind == "imageType":  # a picture; mobex feeds it float32 [1, C, H, W] (runtime/mil/image_io.py)
        image = native_image(feature)
        return TensorSpec(
            name=feature.name, shape=(1, image["channels"], image["height"], image["width"]), dtype="float32"
        )
    if kind in ("stringType", "dictionaryType"):  # classifier outputs: the label, and label -> score
        dtype = "string" if kind == "stringType" else "dict-string-float64"
        return TensorSpec(name=feature.name, shape=(), dtype=dtype)
    if kind != "multiArrayType":
        return TensorSpec(name=feature.name, shape=(), dtype=kind or "unknown")
    array = feature.type.multiArrayType
    dtype = _ARRAY_DTYPES.get(array.dataType, f"coreml-{array.dataType}")
    if not array.shape and array.shapeRange.sizeRanges:  # e.g. NMS outputs: [0..max boxes, classes]
        dims = tuple(int(r.lowerBound) if r.lowerBound == r.upperBound else -1 for r in array.shapeRange.sizeRanges)
        return TensorSpec(name=feature.name, shape=dims, dtype=dtype)
    return TensorSpec(name=feature.name, shape=tuple(int(d) for d in array.shape), dtype=dtype)


def native_image(feature: Any) -> dict[str, Any]:
    """An image input's colour space and size as the spec declares them."""
    from coremltools.proto import FeatureTypes_pb2

    image = feature.type.imageType
    space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
    channels = 1 if space.startswith("GRAYSCALE") else 3
    return {"color_space": space, "channels": channels, "height": int(image.height), "width": int(image.width)}


def read_interface(package: Path) -> dict[str, Any]:
    """The native forms the package declares, for the manifest: image inputs, classifier outputs, and the
    Vision detection layout (with its NMS stage, for a pipeline)."""
    import coremltools as ct

    from mobex.converters.coreml_detection import read_detection

    spec = ct.utils.load_spec(str(package))
    out: dict[str, Any] = {}
    images = {f.name: native_image(f) for f in spec.description.input if f.type.WhichOneof("Type") == "imageType"}
    if images:
        out["image_inputs"] = images
    if spec.description.predictedFeatureName:
        out["classifier"] = {
            "label_output": spec.description.predictedFeatureName,
            "scores_output": spec.description.predictedProbabilitiesName,
        }
    detection = read_detection(spec)
    if detection is not None:
        out["detection"] = detection
    return out


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _flat_tensors(value: Any) -> list[torch.Tensor]:
    import torch
    from torch.utils import _pytree

    return [leaf for leaf in _pytree.tree_leaves(value) if isinstance(leaf, torch.Tensor)]


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."
