"""Core ML detection models the way Vision expects them: the object-detector layout and an NMS pipeline.

Vision's `VNCoreMLRequest` treats a Core ML model as an object detector when it has two multi-array outputs,
- `confidence` [boxes, classes]: per box, each class's probability (0..1; Vision reads their sum as the
  chance that there is any object, so a background class is left out), and
- `coordinates` [boxes, 4]: per box, centre x, centre y, width and height, normalized to 0..1 of the
  model's input picture (origin top left, as the model sees it),
and returns `VNRecognizedObjectObservation`s (labels sorted by confidence, a normalized bounding box) when
the model ends in Core ML's `NonMaximumSuppression` model, as a pipeline. Without it Vision hands back the
two arrays (`VNCoreMLFeatureValueObservation`) and the app runs its own NMS.

`[ios] detection_layout = "vision"` (the default for detectors with a Core ML image input) converts the
model with a small torch module after it that turns the recipe's outputs into that layout: the
`[detection].score_activation`, the background class dropped, the boxes from `box_format` to normalized
centre/size (`box_units = "pixels"` divides by the image input's width and height; refused when the input
size is not known). `[ios] nms` (on by default with the Vision layout) wraps every variant's ML program in
a pipeline with a NonMaximumSuppression model: per class (PickTop perClass, the recipe's detections are per
class too), the recipe's `iou_threshold` and `score_threshold` as defaults that the app may override
through the optional `iouThreshold` / `confidenceThreshold` inputs, at most `max_detections` boxes (the
output's shape range), the labels as class names.

Validation (mobex.runtime.mil.detection_io): the MIL reference interpreter runs the ML program and, for the
pipeline, an NMS stage written in numpy from the NonMaximumSuppression spec. Core ML's own `predict` (and
Vision) cannot run on Linux: what is validated is the converted program and mobex's reading of the NMS spec,
not Apple's NMS implementation.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mobex.errors import UsageError

# METADATA_KEY: the user-defined metadata holding the layout (DetectionLayout.record) as JSON; CONFIDENCE and
# COORDINATES: Vision's output names. Defined where the MIL interpreter reads them back.
from mobex.runtime.mil.detection_io import CONFIDENCE, COORDINATES, METADATA_KEY

IOU_INPUT, CONFIDENCE_INPUT = "iouThreshold", "confidenceThreshold"


@dataclass(frozen=True)
class DetectionOptions:
    """What the recipe says about a detector ([detection] and the [ios] detection options)."""

    scores: str
    boxes: str
    box_format: str = "xyxy"
    box_units: str = "pixels"
    score_activation: str = "none"
    background_class: int | None = None
    score_threshold: float = 0.5
    iou_threshold: float = 0.5
    max_detections: int = 100
    layout: str | None = None  # "vision" | "raw" | None (vision for detectors with an image input)
    nms: bool | None = None  # None: with the Vision layout


@dataclass(frozen=True)
class NmsParams:
    iou_threshold: float
    confidence_threshold: float
    max_boxes: int
    per_class: bool = True


@dataclass(frozen=True)
class DetectionLayout:
    """The planned Vision layout: which recipe outputs it reads and how it maps them (see the module docstring)."""

    scores: str
    boxes: str
    box_format: str
    box_units: str
    width: int
    height: int
    score_activation: str
    background_class: int | None
    classes: int  # confidence columns (background left out)
    labels: list[str]
    nms: NmsParams | None

    def record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict) -> DetectionLayout:
        nms = d.get("nms")
        return cls(**{**d, "nms": NmsParams(**nms) if nms else None})

    def metadata(self) -> dict[str, str]:
        return {METADATA_KEY: json.dumps(self.record(), sort_keys=True)}

    def output_descriptions(self) -> dict[str, str]:
        return {
            CONFIDENCE: f"per box, the probability of each of {self.classes} classes (see the class labels)",
            COORDINATES: "per box: centre x, centre y, width, height, normalized to the input image (0..1)",
        }

    def notes(self) -> list[str]:
        out = [
            f"Vision detection layout: {CONFIDENCE} [boxes, {self.classes}] ({self.score_activation} of {self.scores!r}"
            + (f", background class {self.background_class} left out" if self.background_class is not None else "")
            + f"), {COORDINATES} [boxes, 4] (normalized cx, cy, w, h from {self.boxes!r} in {self.box_format}, "
            + (f"pixels of {self.width}x{self.height})" if self.box_units == "pixels" else "normalized)")
        ]
        if self.nms is not None:
            n = self.nms
            out.append(
                f"NMS pipeline: NonMaximumSuppression per {'class' if n.per_class else 'image (class-agnostic)'}, "
                f"iou {n.iou_threshold:g}, confidence {n.confidence_threshold:g} (overridable inputs {IOU_INPUT}, "
                f"{CONFIDENCE_INPUT}), at most {n.max_boxes} boxes: Vision returns VNRecognizedObjectObservation"
            )
        return out


def plan_detection(
    options: DetectionOptions | None,
    example_inputs: dict[str, Any],
    output_names: list[str],
    reference_outputs: list[Any],
    *,
    image_input: str | None,
    labels: list[str] | None,
) -> DetectionLayout | None:
    """The Vision layout for this model, or None (raw outputs). Raises UsageError for a layout asked for that
    cannot be made; the default (unset) falls back to the raw outputs instead."""
    if options is None or options.layout == "raw":
        return None
    asked = options.layout == "vision" or options.nms is True
    if options.layout is None and not asked and image_input is None:
        return None  # the default: only detectors Vision serves, i.e. with an image input
    try:
        return _plan(options, example_inputs, output_names, reference_outputs, image_input, labels)
    except UsageError:
        if asked:
            raise
        return None


def _plan(
    options: DetectionOptions,
    example_inputs: dict[str, Any],
    output_names: list[str],
    reference_outputs: list[Any],
    image_input: str | None,
    labels: list[str] | None,
) -> DetectionLayout:
    hint = 'set [ios] detection_layout = "raw" to keep the recipe\'s outputs'
    extra = [n for n in output_names if n not in (options.scores, options.boxes)]
    if extra:
        raise UsageError(
            f"the Vision detection layout has two outputs ({CONFIDENCE}, {COORDINATES}), but the model also returns "
            f"{', '.join(extra)}",
            hint=hint,
        )
    scores = reference_outputs[output_names.index(options.scores)]
    boxes = reference_outputs[output_names.index(options.boxes)]
    if scores.shape[0] != 1 or boxes.shape[0] != 1:
        raise UsageError(
            f"the Vision detection layout takes one picture per prediction, but the model's batch is {scores.shape[0]}",
            hint="make the inputs' first dimension 1, or " + hint,
        )
    if scores.dim() not in (2, 3) or boxes.dim() != 3 or boxes.shape[-1] != 4 or boxes.shape[1] != scores.shape[1]:
        raise UsageError(
            f"scores {list(scores.shape)} and boxes {list(boxes.shape)} are not [1, anchors(, classes)] and "
            "[1, anchors, 4]",
            hint=hint,
        )
    total = 1 if scores.dim() == 2 else int(scores.shape[2])
    background = options.background_class
    if background is not None and background >= total:
        raise UsageError(f"[detection] background_class = {background}, but the scores have {total} classes")
    classes = total - (background is not None)
    if classes < 1:
        raise UsageError("the scores hold only the background class: nothing for Vision to detect", hint=hint)
    width = height = 0
    if options.box_units == "pixels":
        if image_input is None:
            raise UsageError(
                '[detection] box_units = "pixels": the Vision layout divides the boxes by the input picture\'s width '
                "and height, but the model has no Core ML image input to take them from",
                hint='give [preprocessing] kind = "image" with a scale (an image input), or set '
                '[detection] box_units = "normalized" if the boxes are already 0..1; or ' + hint,
            )
        shape = tuple(example_inputs[image_input].shape)
        height, width = int(shape[2]), int(shape[3])
    names = _class_names(labels, total, classes, background)
    nms = None
    if options.nms is not False:
        nms = NmsParams(options.iou_threshold, options.score_threshold, options.max_detections, per_class=True)
    return DetectionLayout(
        options.scores, options.boxes, options.box_format, options.box_units, width, height,
        options.score_activation, background, classes, names, nms,
    )  # fmt: skip


def _class_names(labels: list[str] | None, total: int, classes: int, background: int | None) -> list[str]:
    if labels is None:
        return [f"class_{i}" for i in range(total) if i != background]
    if len(labels) == total and background is not None:
        return [label for i, label in enumerate(labels) if i != background]
    if len(labels) == classes:
        return list(labels)
    raise UsageError(
        f"{len(labels)} labels for a detector with {total} score classes"
        + (f" (background class {background} included)" if background is not None else ""),
        hint="give one label per class (the background's may be left out)",
    )


def vision_module(model: Any, layout: DetectionLayout, output_names: list[str]) -> Any:
    """`model` followed by the mapping to Vision's layout: returns (confidence [A, C], coordinates [A, 4])."""
    import torch
    from torch.utils import _pytree

    si, bi = output_names.index(layout.scores), output_names.index(layout.boxes)
    if layout.box_units == "pixels":
        size = [layout.width, layout.height, layout.width, layout.height]
    else:
        size = [1.0, 1.0, 1.0, 1.0]

    class VisionDetector(torch.nn.Module):
        """Scores -> class probabilities (background left out); boxes -> normalized cx, cy, w, h."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("size", torch.tensor(size, dtype=torch.float32))

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            outs = [t for t in _pytree.tree_leaves(self.model(*inputs)) if isinstance(t, torch.Tensor)]
            s, b = outs[si].float(), outs[bi].float()
            if s.dim() == 2:
                s = s.unsqueeze(-1)
            if layout.score_activation == "sigmoid":
                s = torch.sigmoid(s)
            elif layout.score_activation == "softmax":
                s = torch.softmax(s, dim=-1)
            if layout.background_class is not None:
                k = layout.background_class
                s = torch.cat([s[..., :k], s[..., k + 1 :]], dim=-1)
            if layout.box_format == "xyxy":
                b = torch.cat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2]], dim=-1)
            elif layout.box_format == "xywh":
                b = torch.cat([b[..., :2] + b[..., 2:] / 2, b[..., 2:]], dim=-1)
            return s[0], b[0] / self.size

    return VisionDetector().eval()


# --------------------------------------------------------------------------- the NMS pipeline


def nms_pipeline(program: Path, layout: DetectionLayout) -> Any:
    """A pipeline (MLModel, not loaded) of the ML program at `program` (Vision layout) and a NonMaximumSuppression
    model, with the program's metadata, its image input, and the optional threshold inputs; save it with
    mobex.converters.coreml.save_package (`wrap_nms`)."""
    import coremltools as ct
    from coremltools.models import datatypes
    from coremltools.models.pipeline import Pipeline
    from coremltools.proto import Model_pb2

    assert layout.nms is not None
    params = layout.nms
    stage = ct.models.MLModel(str(program), skip_model_load=True)
    spec = stage.get_spec()
    names = [o.name for o in spec.description.output]
    if names != [CONFIDENCE, COORDINATES]:
        raise UsageError(f"{program.name}: the NMS pipeline needs outputs {CONFIDENCE}, {COORDINATES}, not {names}")
    # The program's outputs keep their names inside the pipeline under a prefix; NMS gives the public ones.
    raw = {CONFIDENCE: f"raw_{CONFIDENCE}", COORDINATES: f"raw_{COORDINATES}"}
    ct.utils.rename_feature(spec, CONFIDENCE, raw[CONFIDENCE], rename_inputs=False, rename_outputs=True)
    ct.utils.rename_feature(spec, COORDINATES, raw[COORDINATES], rename_inputs=False, rename_outputs=True)
    anchors = _anchors(spec)
    for feature, width in zip(spec.description.output, (layout.classes, 4), strict=True):
        feature.type.multiArrayType.shape[:] = [anchors, width]

    nms_spec = Model_pb2.Model()
    nms_spec.specificationVersion = spec.specificationVersion
    for i, (public, width) in enumerate(((CONFIDENCE, layout.classes), (COORDINATES, 4))):
        source = spec.description.output[i]
        nms_spec.description.input.add().CopyFrom(source)
        out = nms_spec.description.output.add()
        out.CopyFrom(source)
        out.name = public
        array = out.type.multiArrayType
        del array.shape[:]
        first, second = array.shapeRange.sizeRanges.add(), array.shapeRange.sizeRanges.add()
        first.lowerBound, first.upperBound = 0, params.max_boxes
        second.lowerBound = second.upperBound = width
    for name in (IOU_INPUT, CONFIDENCE_INPUT):
        feature = nms_spec.description.input.add()
        feature.name = name
        feature.type.doubleType.MergeFromString(b"")
        feature.type.isOptional = True
    nms = nms_spec.nonMaximumSuppression
    nms.confidenceInputFeatureName, nms.coordinatesInputFeatureName = raw[CONFIDENCE], raw[COORDINATES]
    nms.confidenceOutputFeatureName, nms.coordinatesOutputFeatureName = CONFIDENCE, COORDINATES
    nms.iouThresholdInputFeatureName, nms.confidenceThresholdInputFeatureName = IOU_INPUT, CONFIDENCE_INPUT
    nms.iouThreshold, nms.confidenceThreshold = params.iou_threshold, params.confidence_threshold
    nms.pickTop.perClass = params.per_class
    nms.stringClassLabels.vector.extend(layout.labels)

    inputs = [(f.name, datatypes.Array(1)) for f in spec.description.input]
    inputs += [(IOU_INPUT, datatypes.Double()), (CONFIDENCE_INPUT, datatypes.Double())]
    pipeline = Pipeline(input_features=inputs, output_features=[CONFIDENCE, COORDINATES])
    pipeline.add_model(spec)
    pipeline.add_model(nms_spec)
    root = pipeline.spec
    root.specificationVersion = spec.specificationVersion
    for i, feature in enumerate(spec.description.input):
        root.description.input[i].CopyFrom(feature)
    for i, name in enumerate((IOU_INPUT, CONFIDENCE_INPUT), start=len(spec.description.input)):
        root.description.input[i].CopyFrom(nms_spec.description.input[2 + (name == CONFIDENCE_INPUT)])
    for i in range(2):
        root.description.output[i].CopyFrom(nms_spec.description.output[i])
    root.description.metadata.CopyFrom(spec.description.metadata)
    for name, text in layout.output_descriptions().items():
        next(o for o in root.description.output if o.name == name).shortDescription = text
    for name, default in ((IOU_INPUT, params.iou_threshold), (CONFIDENCE_INPUT, params.confidence_threshold)):
        feature = next(f for f in root.description.input if f.name == name)
        feature.shortDescription = f"(optional) overrides the {name} of the NMS stage (default {default:g})"
    return ct.models.MLModel(root, weights_dir=stage.weights_dir, skip_model_load=True)


def _anchors(spec: Any) -> int:
    """Boxes per prediction of the Vision-layout program (its confidence output's first dimension)."""
    shape = list(spec.description.output[0].type.multiArrayType.shape)
    if shape:
        return int(shape[0])
    raise UsageError("the Vision-layout program does not declare its confidence shape")


def read_detection(spec: Any) -> dict[str, Any] | None:
    """The manifest's `detection` entry: what Vision returns for this package, or None (not a Vision layout)."""
    raw = spec.description.metadata.userDefined.get(METADATA_KEY)
    if not raw:
        return None
    layout = DetectionLayout.from_record(json.loads(raw))
    out: dict[str, Any] = {
        "layout": "vision",
        "confidence_output": CONFIDENCE,
        "coordinates_output": COORDINATES,
        "coordinates": "centre x, centre y, width, height, normalized to the input image (origin top left)",
        "classes": list(layout.labels),
        "score_activation": layout.score_activation,
        "background_class_dropped": layout.background_class,
        "vision_returns": "VNCoreMLFeatureValueObservation (the two multi-arrays; run NMS in the app)",
        "nms": None,
    }
    if spec.WhichOneof("Type") == "pipeline":
        nms = spec.pipeline.models[-1].nonMaximumSuppression
        out["nms"] = {
            "per_class": bool(nms.pickTop.perClass),
            "iou_threshold": nms.iouThreshold,
            "confidence_threshold": nms.confidenceThreshold,
            "max_boxes": int(spec.description.output[0].type.multiArrayType.shapeRange.sizeRanges[0].upperBound),
            "iou_threshold_input": nms.iouThresholdInputFeatureName,
            "confidence_threshold_input": nms.confidenceThresholdInputFeatureName,
        }
        out["vision_returns"] = (
            "VNRecognizedObjectObservation (labels from the classes, sorted by confidence; boundingBox normalized, "
            "in Vision's lower-left origin)"
        )
    return out


def read_layout(spec: Any) -> DetectionLayout | None:
    """The Vision layout a package's spec records (its `mobex.detection` metadata), or None."""
    raw = spec.description.metadata.userDefined.get(METADATA_KEY)
    return DetectionLayout.from_record(json.loads(raw)) if raw else None


def nms_layout(program: Path) -> DetectionLayout | None:
    """The layout of an ML program that is to be wrapped in the NMS pipeline, or None (ship it as it is)."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(program))
    layout = read_layout(spec) if spec.WhichOneof("Type") == "mlProgram" else None
    return layout if layout is not None and layout.nms is not None else None


def has_detection_layout(package: Path) -> bool:
    """Whether a saved package has the Vision detection layout (a `mobex.detection` record)."""
    import coremltools as ct

    return read_layout(ct.utils.load_spec(str(package))) is not None
