"""The recipe: one TOML file that drives a build, validated with pydantic.

Every mistake (unknown key, wrong type, missing file, bad version, unknown variant) becomes one
`RecipeError` that names the file and the field, so a user fixes it without reading a traceback.
Paths in the recipe are relative to the recipe's folder.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from mobex import plugins
from mobex.bounded import MAX_TOML_BYTES, LimitExceeded, check_toml_limits
from mobex.errors import RecipeError
from mobex.names import SEMVER_RE
from mobex.preprocessing import NoPreprocessing, PreprocessingContract, parse_preprocessing
from mobex.recipe_paths import check_inside_folder

SEMVER = SEMVER_RE  # one definition, in the manifest schema
BUNDLE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
# iOS versions a recipe may target (ML Programs need iOS15 or later), oldest first.
IOS_TARGETS: tuple[str, ...] = ("iOS15", "iOS16", "iOS17", "iOS18")
INPUT_DTYPES = ("float32", "float16", "int32", "int64", "uint8", "bool")
SHIP_POLICIES = ("smallest-passing", "fastest-passing")
GATE_METRICS: dict[str, str] = {
    # metric -> "max" (value must be <= limit) or "min" (value must be >= limit)
    "max_abs_error": "max",
    "mean_abs_error": "max",
    "cosine_min": "min",
    "snr_db": "min",
    "top1_agreement": "min",
    "accuracy_drop": "max",
    "p50_ms": "max",
    "size_bytes": "max",
    # outputs of a few values per sample (mobex.metrics.parity): error over the output's range on the split
    "range_error_max": "max",
    "range_error_mean": "max",
    # task = "detection" (mobex.metrics.detection)
    "map50_agreement": "min",
    "matched_iou_mean": "min",
    "score_error_mean": "max",
    "map50_drop": "max",
    # task = "segmentation" (mobex.metrics.segmentation)
    "pixel_agreement": "min",
    "miou_agreement": "min",
    "miou_drop": "max",
    # task = "embedding" (mobex.metrics.embedding)
    "recall_at_k": "min",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    name: str
    version: str
    source: str
    weights: Path | None = None
    task: Literal["classification", "regression", "detection", "segmentation", "embedding", "other"] = "other"
    # classification with several outputs: the [[outputs]] name of the class scores (the others get tensor parity)
    class_output: str | None = None
    labels: Path | None = None
    description: str = ""
    author: str = ""
    license: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not BUNDLE_NAME.fullmatch(v):
            raise ValueError(
                f"{v!r} is not a bundle name: use lowercase letters, digits, '.', '_' or '-' "
                "(e.g. 'digits-cnn'), at most 64 characters"
            )
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        if not SEMVER.fullmatch(v):
            raise ValueError(f"{v!r} is not a SemVer version; write MAJOR.MINOR.PATCH, e.g. '1.0.0'")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if v.endswith((".pt", ".pt2")) or ":" in v:
            return v
        raise ValueError(
            f"{v!r} is not a model source; use 'module:function' (a factory returning an nn.Module), "
            "a TorchScript '.pt' file or an ExportedProgram '.pt2' file"
        )


class InputSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    shape: list[StrictInt] = Field(min_length=1)
    dtype: Literal["float32", "float16", "int32", "int64", "uint8", "bool"] = "float32"
    description: str = ""

    @field_validator("shape")
    @classmethod
    def _shape(cls, v: list[int]) -> list[int]:
        if any(d <= 0 for d in v):
            raise ValueError(f"every dimension must be a positive integer (static shapes), got {v}")
        return v


class OutputSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    description: str = ""


class DetectionSection(_Strict):
    """`[detection]`: which outputs hold a detector's scores and boxes, and how detections are read from them.

    Detections (of the original and of every variant alike, mobex.metrics.detection): per class, the anchors
    scoring at least `score_threshold` (after `score_activation`), non-maximum suppression at `iou_threshold`,
    at most `max_detections` per sample, best first.
    """

    scores: str  # [[outputs]] name: [batch, anchors] (one class) or [batch, anchors, classes]
    boxes: str  # [[outputs]] name: [batch, anchors, 4]
    box_format: Literal["xyxy", "cxcywh", "xywh"] = "xyxy"
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    iou_threshold: float = Field(default=0.5, gt=0, le=1)  # non-maximum suppression; 1.0 keeps every box
    max_detections: int = Field(default=100, ge=1)
    score_activation: Literal["none", "sigmoid", "softmax"] = "none"  # applied to the scores output first
    background_class: int | None = Field(default=None, ge=0)  # a class index that is not an object (SSD's 0)
    # What the boxes are measured in: "pixels" of the model's input picture, or "normalized" (0..1 of its width
    # and height). Only Core ML's Vision layout ([ios] detection_layout) reads it: Vision wants normalized boxes.
    box_units: Literal["pixels", "normalized"] = "pixels"

    @model_validator(mode="after")
    def _distinct(self) -> DetectionSection:
        if self.scores == self.boxes:
            raise ValueError("scores and boxes name the same output; name the two outputs")
        return self


class SegmentationSection(_Strict):
    """`[segmentation]`: the output holding per-pixel class scores (mobex.metrics.segmentation)."""

    output: str | None = None  # [[outputs]] name; default: the first output
    class_axis: int = 1  # 1 for [batch, classes, H, W], -1 for [batch, H, W, classes]
    threshold: float = 0.0  # one-channel outputs: a pixel is foreground when its score is above this
    ignore_index: int | None = None  # label value of unlabelled pixels (e.g. 255)


class EmbeddingSection(_Strict):
    """`[embedding]`: the output holding the embedding, and the k of retrieval recall@k (mobex.metrics.embedding)."""

    output: str | None = None  # [[outputs]] name; default: the first output
    k: int = Field(default=5, ge=1)


class StateSpec(_Strict):
    """`[[state]]`: a streaming model's recurrent state, fed back from `output` to `input` at every step."""

    input: str
    output: str


class DataSourceOptions(BaseModel):
    """Options shared by every data set of a recipe (validation, calibration, training)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Leave out files (or table rows) that cannot be decoded, instead of refusing the data; the report counts them.
    skip_bad_files: bool = False
    # At most this many samples per data set, drawn at random with `seed` (pictures, rows, audio windows).
    max_samples: int | None = Field(default=None, ge=1)
    seed: int = 0
    # Keep decoded folder/table data in the cache folder ($MOBEX_CACHE_DIR, else ~/.cache/mobex), keyed by the
    # files' names, sizes and modification times and by the preprocessing, so the next build does not decode again.
    cache: bool = True
    # Tables: the column holding the labels (class names or indices, or regression targets); default "label" if present.
    label_column: str | None = None


class DataSection(DataSourceOptions):  # + skip_bad_files, max_samples, seed, cache, label_column
    validation: Path  # an .npz, a folder of pictures or sounds, or a .csv/.parquet table (mobex.datasources)
    calibration: Path | None = None
    training: Path | None = None
    min_calibration_samples: int = Field(default=32, ge=1)


def ios_target_at_least(target: str, minimum: str) -> bool:
    """True when `target` (e.g. "iOS16") is the same as or newer than `minimum`."""
    return IOS_TARGETS.index(target) >= IOS_TARGETS.index(minimum)


class PlatformSection(_Strict):
    """`[android]` / `[ios]`: the variants to build for the platform and which one ships.

    A variant is named as its target registers it (mobex.plugins): `"int8"` means the platform's default
    target (TFLite on Android, Core ML on iOS), `"executorch:int8"` names the target.
    """

    PLATFORM: ClassVar[str]
    variants: list[str] = Field(min_length=1)
    ship: str = "smallest-passing"

    @field_validator("variants")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        dupes = sorted({x for x in v if v.count(x) > 1})
        if dupes:
            raise ValueError(f"variant(s) listed twice: {', '.join(dupes)}")
        for name in v:
            plugins.parse_request(cls.PLATFORM, name)  # ValueError names the target and the valid variants
        return v

    @model_validator(mode="after")
    def _ship(self) -> PlatformSection:
        if self.ship not in SHIP_POLICIES and self.ship not in self.variants:
            raise ValueError(
                f"ship = {self.ship!r} is neither a policy ({', '.join(SHIP_POLICIES)}) "
                f"nor one of this platform's variants ({', '.join(self.variants)})"
            )
        return self

    def requests(self) -> list[plugins.VariantRequest]:
        """The variants as (platform, target, name), in recipe order."""
        return [plugins.parse_request(self.PLATFORM, name) for name in self.variants]


class AndroidSection(PlatformSection):
    PLATFORM: ClassVar[str] = "android"
    variants: list[str] = Field(default_factory=lambda: ["fp32", "dynamic-int8"], min_length=1)
    min_sdk: int = Field(default=24, ge=21)
    int8_io: bool = False


class IosSection(PlatformSection):
    PLATFORM: ClassVar[str] = "ios"
    variants: list[str] = Field(default_factory=lambda: ["fp16"], min_length=1)
    minimum_deployment_target: str = "iOS16"
    compute_units: Literal["cpu_only", "cpu_and_gpu", "cpu_and_ne", "all"] = "cpu_only"
    # Native interface (mobex.converters.coreml_io): an image input when [preprocessing] is an image contract
    # with `scale`, and classifier outputs (classLabel, classLabel_probs) for classification with labels: by
    # default (None) for image classifiers only, `true` for every classifier, `false` for none.
    image_input: bool = True
    classifier: bool | None = None
    # Detection models (task = "detection", mobex.converters.coreml_detection): "vision" gives the Core ML model
    # Vision's object-detector outputs, `confidence` [boxes, classes] and `coordinates` [boxes, 4] (normalized
    # centre x, centre y, width, height); "raw" keeps the recipe's outputs. Unset: "vision" for detectors with a
    # Core ML image input (the models Vision serves), "raw" otherwise. `nms` (Vision layout only) makes the model a
    # pipeline ending in Core ML's NonMaximumSuppression, so Vision returns VNRecognizedObjectObservations; unset:
    # on whenever the layout is "vision".
    detection_layout: Literal["vision", "raw"] | None = None
    nms: bool | None = None

    @field_validator("minimum_deployment_target")
    @classmethod
    def _target(cls, v: str) -> str:
        if v not in IOS_TARGETS:
            raise ValueError(f"{v!r} is not supported; use one of {', '.join(IOS_TARGETS)} (mlprogram needs iOS15+)")
        return v

    @model_validator(mode="after")
    def _runnable(self) -> IosSection:
        for request in self.requests():
            needed = request.spec.min_os
            if needed and not ios_target_at_least(self.minimum_deployment_target, needed):
                raise ValueError(
                    f"variant {request.spelled!r} needs minimum_deployment_target = {needed!r} or later, "
                    f"but the recipe says {self.minimum_deployment_target!r}; raise the target or drop the variant"
                )
        return self


class GatesSection(_Strict):
    """Limits per metric. Defaults come per variant family (see mobex.validate.gates)."""

    all: dict[str, float] = Field(default_factory=dict)
    variants: dict[str, dict[str, float]] = Field(default_factory=dict)
    allow_unvalidated: bool = False

    @field_validator("all")
    @classmethod
    def _metrics(cls, v: dict[str, float]) -> dict[str, float]:
        _check_metrics(v)
        return v

    @field_validator("variants")
    @classmethod
    def _variant_metrics(cls, v: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for key, limits in v.items():
            if not plugins.resolve_gate_key(key):
                raise ValueError(
                    f"[gates.variants.{key}] names no variant; use a variant name (every target's) or "
                    '"<target>:<variant>" (one target\'s), e.g. [gates.variants."coreml:int8-weights"]'
                )
            _check_metrics(limits)
        return v


def _check_metrics(limits: dict[str, float]) -> None:
    for metric in limits:
        if metric not in GATE_METRICS:
            raise ValueError(f"unknown gate metric {metric!r}; valid: {', '.join(GATE_METRICS)}")


class FinetuneSection(_Strict):
    """Recovery fine-tuning after pruning, on the recipe's training data (see mobex.prune.finetune)."""

    epochs: int = Field(default=3, ge=1, le=1000)
    learning_rate: float = Field(default=1e-3, gt=0)
    batch_size: int = Field(default=64, ge=2)  # BatchNorm cannot train on one sample
    weight_decay: float = Field(default=0.0, ge=0)
    seed: int = 0  # shuffle and dropout seed: the same recipe gives the same pruned model
    threads: int = Field(default=1, ge=1)  # torch threads while pruning and fine-tuning (small models: 1 is fastest)
    data: Path | None = None  # defaults to [data].training


class PruneSection(_Strict):
    """Pruning before conversion (both targets). Owned by mobex.prune.pruning."""

    method: Literal["magnitude", "structured"]
    sparsity: float  # fraction of weights (magnitude) or of channels (structured) to remove
    scope: Literal["global", "per-layer"] = "global"
    layers: dict[str, float] = Field(default_factory=dict)  # per-layer sparsity overrides, by module name
    ignore: list[str] = Field(default_factory=list)  # module names left alone (e.g. the classifier)
    finetune: FinetuneSection | None = None
    # classifiers with labels: the pruned (and fine-tuned) float model may lose at most this much
    # accuracy against the original, or nothing ships (the variants' gates compare with the pruned model)
    max_accuracy_drop: float = Field(default=0.02, ge=0, le=1)

    @field_validator("sparsity")
    @classmethod
    def _sparsity(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"sparsity must be strictly between 0 and 1 (a fraction), got {v}")
        return v

    @field_validator("layers")
    @classmethod
    def _layer_sparsity(cls, v: dict[str, float]) -> dict[str, float]:
        for name, value in v.items():
            if not 0 < value < 1:
                raise ValueError(f"sparsity of layer {name!r} must be strictly between 0 and 1, got {value}")
        return v

    @model_validator(mode="after")
    def _no_overlap(self) -> PruneSection:
        both = sorted(set(self.layers) & set(self.ignore))
        if both:
            raise ValueError(f"layer(s) {', '.join(both)} are both in `layers` and in `ignore`: keep one")
        return self


class Int8FinetuneSection(_Strict):
    """Quantization-aware fine-tuning of the static int8 variant (mobex.quantize.tflite.qat): distils the
    float model's outputs on training data (labels not needed) into the built int8 model's weights."""

    epochs: int = Field(default=2, ge=1, le=100)
    learning_rate: float = Field(default=0.02, gt=0)  # Adam step for the weights, in int8 levels
    bias_learning_rate: float = Field(default=1e-4, gt=0)  # Adam step for the biases, in the model's units
    scale_learning_rate: float = Field(default=1e-3, ge=0)  # Adam step for activation log-scales; 0: keep them
    batch_size: int = Field(default=16, ge=1)
    max_samples: int = Field(default=2048, ge=1)  # at most this many training samples, evenly spread
    # Besides the full-int8 model, how many smaller float-fallback sets (2, 4, ... of the most sensitive ops,
    # fewer than the plain search needed) to fine-tune and try; each costs a training run.
    fallback_trials: int = Field(default=2, ge=0, le=8)
    seed: int = 0
    threads: int = Field(default=2, ge=1)
    data: Path | None = None  # defaults to [data].training


class QuantizationSection(_Strict):
    """Options for quantized variants. Owned by mobex.quantize (int8 accuracy work, docs/quantization.md)."""

    calibration_samples: int = Field(default=256, ge=1)  # at most this many calibration samples are used
    int8_fallback: bool = True  # when int8 fails its gate on calibration data, keep the most sensitive ops in float
    max_fallback_layers: int = Field(default=8, ge=0)
    equalize: bool = True  # cross-layer equalization of linear channels (on the float graph) before int8
    bias_correction: bool = True  # remove the mean output shift that int8 weight rounding causes
    range_estimation: Literal["minmax", "percentile", "mse"] = "minmax"  # int8 activation ranges
    # How quantized weights are rounded: "gptq" chooses the integer levels that minimise each layer's output
    # error on calibration data (then corrects the biases); "nearest" keeps the converter's round-to-nearest.
    weight_rounding: Literal["gptq", "nearest"] = "gptq"
    # When int8 fails its gate on calibration data: fine-tune the int8 model itself (off unless the table is given).
    finetune: Int8FinetuneSection | None = None
    # With [data].training, every 10th training sample (at most 256) is held out, and each fallback-search
    # candidate that passes on the calibration data must pass on those samples too (docs/quantization.md).
    search_held_out: bool = True


class LatencySection(_Strict):
    threads: list[int] = Field(default_factory=lambda: [1, 4], min_length=1)  # 1 and a phone's 4 big cores
    warmup: int = Field(default=5, ge=0)
    runs: int = Field(default=50, ge=1)

    @field_validator("threads")
    @classmethod
    def _threads(cls, v: list[int]) -> list[int]:
        if any(t < 1 for t in v):
            raise ValueError("thread counts must be >= 1")
        return v


class MonitoringSection(_Strict):
    """[monitoring]: thresholds `mobex monitor` checks field telemetry against (docs/monitoring.md).

    Drops are against the bundle's validated numbers; None turns a check off.
    """

    window: str = "1h"  # telemetry is grouped per window (and per app version / device model)
    max_accuracy_drop: float | None = Field(default=0.05, ge=0, le=1)
    max_f1_drop: float | None = Field(default=0.05, ge=0, le=1)
    max_precision_drop: float | None = Field(default=None, ge=0, le=1)
    max_recall_drop: float | None = Field(default=None, ge=0, le=1)
    psi: float = Field(default=0.2, gt=0)  # drift, as `mobex drift --psi`
    ks_p: float = Field(default=0.01, gt=0, lt=1)  # family-wise KS level, as `mobex drift --ks-p`
    max_latency_ratio: float | None = Field(default=3.0, gt=0)  # field p50/p99 over the build's (--build-report)
    max_p50_ms: float | None = Field(default=None, gt=0)
    max_p99_ms: float | None = Field(default=None, gt=0)
    min_throughput_per_s: float | None = Field(default=None, ge=0)
    # A group with fewer predictions raises no drift/latency/throughput alert: with n new and m reference
    # samples, PSI over 10 bins averages about 9 * (1/n + 1/m) on identical data (0.1 at n = 100, m = 360).
    min_samples: int = Field(default=100, ge=1)
    min_labels: int = Field(default=30, ge=1)  # fewer labelled predictions: no accuracy/precision/recall/F1 alert


class ReleaseSection(_Strict):
    """[release]: budgets a build must keep against the release it replaces (`mobex build --baseline`).

    Growth and regression are fractions of the previous value (0.10: at most 10 % larger / slower); drops
    are absolute (0.01: one point of accuracy). None turns a budget off. A budget that cannot be measured
    (no labels for accuracy) fails, as a gate does; latency is not checked where the host cannot time the
    target at all (Core ML off macOS), and the report says so.
    """

    max_size_growth: float | None = Field(default=None, ge=0)
    max_latency_regression: float | None = Field(default=None, ge=0)  # p50, measured interleaved in one run
    max_accuracy_drop: float | None = Field(default=None, ge=0, le=1)  # against the labels, both on this data
    max_f1_drop: float | None = Field(default=None, ge=0, le=1)
    min_agreement_with_previous: float | None = Field(default=None, ge=0, le=1)  # top-1 (classifiers)
    min_cosine_with_previous: float | None = Field(default=None, ge=-1, le=1)  # worst sample's output cosine


class Recipe(_Strict):
    model: ModelSection
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[OutputSpec] = Field(default_factory=list)
    preprocessing: PreprocessingContract = Field(default_factory=NoPreprocessing)  # typed: mobex.preprocessing
    data: DataSection
    android: AndroidSection | None = None
    ios: IosSection | None = None
    gates: GatesSection = Field(default_factory=GatesSection)
    latency: LatencySection = Field(default_factory=LatencySection)
    prune: PruneSection | None = None
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    monitoring: MonitoringSection = Field(default_factory=MonitoringSection)
    release: ReleaseSection = Field(default_factory=ReleaseSection)
    detection: DetectionSection | None = None
    segmentation: SegmentationSection | None = None
    embedding: EmbeddingSection | None = None
    state: list[StateSpec] = Field(default_factory=list)

    # Filled in by load_recipe, not by the TOML.
    path: Path = Field(default=Path("recipe.toml"), exclude=True)
    sha256: str = Field(default="", exclude=True)

    @field_validator("preprocessing", mode="before")
    @classmethod
    def _preprocessing(cls, v: Any) -> PreprocessingContract:
        return parse_preprocessing(v)

    @model_validator(mode="after")
    def _preprocessing_fits_inputs(self) -> Recipe:
        self.preprocessing.check_inputs({i.name: list(i.shape) for i in self.inputs})
        return self

    @model_validator(mode="after")
    def _cross_checks(self) -> Recipe:
        names = [i.name for i in self.inputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"input name(s) listed twice: {', '.join(dupes)}")
        if self.model.source.endswith(".pt"):
            for request in self.requests():
                info = plugins.target_info(request.target)
                if not info.takes_torchscript:
                    raise ValueError(
                        f"[model].source is TorchScript (.pt), which the {info.title or info.name} target cannot "
                        f"convert ({request.platform} variant {request.spelled!r}): it needs torch.export. Use a "
                        "'module:function' factory or an ExportedProgram (.pt2), or drop that variant"
                    )
        if self.android is None and self.ios is None:
            raise ValueError("the recipe has neither [android] nor [ios]: add at least one to build something")
        return self

    @model_validator(mode="after")
    def _task_outputs(self) -> Recipe:
        """The task's tables match the task, and every output they name is one of [[outputs]]."""
        task = self.model.task
        for table, wanted in (("detection", "detection"), ("segmentation", "segmentation"), ("embedding", "embedding")):
            if getattr(self, table) is not None and task != wanted:
                raise ValueError(f"[{table}] is for task = {wanted!r}, but [model].task is {task!r}")
        if task == "detection" and self.detection is None:
            raise ValueError('task = "detection" needs a [detection] table naming the scores and boxes outputs')
        if self.ios is not None and (self.ios.detection_layout == "vision" or self.ios.nms):
            if task != "detection":
                raise ValueError(
                    '[ios] detection_layout = "vision" and nms = true are for task = "detection", '
                    f"but the task is {task!r}"
                )
            if self.ios.nms and self.ios.detection_layout == "raw":
                raise ValueError(
                    "[ios] nms = true needs the Vision layout (the NMS model reads confidence and coordinates): "
                    'drop detection_layout = "raw" or set nms = false'
                )
        if self.model.class_output is not None and task != "classification":
            raise ValueError(f"[model].class_output is for task = 'classification', but the task is {task!r}")
        if task == "classification" and len(self.outputs) > 1 and self.model.class_output is None:
            raise ValueError(
                'a classification model with several [[outputs]] needs [model].class_output = "<name>": '
                "the output that holds the class scores (the others get tensor parity)"
            )
        names = [o.name for o in self.outputs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"output name(s) listed twice: {', '.join(dupes)}")
        for field, name in self._named_outputs():
            if name not in names:
                listed = ", ".join(names) if names else "none: add [[outputs]] tables, one per output, in order"
                raise ValueError(f"{field} = {name!r} is not an output name ([[outputs]]: {listed})")
        return self

    @model_validator(mode="after")
    def _states(self) -> Recipe:
        inputs = {i.name: i for i in self.inputs}
        seen: set[str] = set()
        for i, state in enumerate(self.state):
            where = f"[[state]] #{i + 1}"
            if state.input not in inputs:
                raise ValueError(f"{where}: input {state.input!r} is not one of [[inputs]] ({', '.join(inputs)})")
            if not inputs[state.input].dtype.startswith("float"):
                raise ValueError(f"{where}: state input {state.input!r} must be a float input")
            if state.input in seen or state.output in seen:
                raise ValueError(f"{where}: {state.input!r} or {state.output!r} is already in another [[state]] pair")
            seen.update((state.input, state.output))
        if self.state and len(self.state) == len(self.inputs):
            raise ValueError("every input is a [[state]] input: a streaming model needs at least one input per step")
        return self

    def _named_outputs(self) -> list[tuple[str, str]]:
        """(recipe field, output name) for every output the task options and [[state]] refer to by name."""
        found = [("[model].class_output", self.model.class_output)]
        if self.detection is not None:
            found += [("[detection].scores", self.detection.scores), ("[detection].boxes", self.detection.boxes)]
        found.append(("[segmentation].output", self.segmentation.output if self.segmentation else None))
        found.append(("[embedding].output", self.embedding.output if self.embedding else None))
        found += [(f"[[state]] #{i + 1} output", s.output) for i, s in enumerate(self.state)]
        return [(field, name) for field, name in found if name is not None]

    def class_output_index(self) -> int:
        """Which output holds the class scores: `[model] class_output`'s position in [[outputs]], else the first."""
        if not self.model.class_output:
            return 0
        return [o.name for o in self.outputs].index(self.model.class_output)

    def output_names(self, count: int) -> list[str]:
        """The recipe's output names, or output_0..N-1 when it does not name them (or names another count).

        When the task options or [[state]] refer to outputs by name, the count must match: RecipeError otherwise.
        """
        if self.outputs and len(self.outputs) == count:
            return [o.name for o in self.outputs]
        if self.outputs and self._named_outputs():
            raise RecipeError(
                f"{self.path}: [[outputs]] names {len(self.outputs)} outputs, but the model returns {count}",
                "list one [[outputs]] table per tensor the model returns, in order",
            )
        return [f"output_{i}" for i in range(count)]

    def sections(self) -> list[PlatformSection]:
        """The platform sections the recipe has, Android first."""
        return [s for s in (self.android, self.ios) if s is not None]

    def requests(self) -> list[plugins.VariantRequest]:
        """Every variant the recipe asks for, platform by platform, in recipe order."""
        return [r for section in self.sections() for r in section.requests()]

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    def resolve(self, relative: Path) -> Path:
        """A recipe path made absolute against the recipe's folder."""
        return relative if relative.is_absolute() else (self.base_dir / relative)

    def labels(self) -> list[str] | None:
        if self.model.labels is None:
            return None
        lines = self.resolve(self.model.labels).read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip()]


def _loc(loc: tuple[Any, ...]) -> str:
    """('android', 'variants', 2) -> '[android].variants[2]'."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        elif i == 0:
            out += f"[{part}]"
        else:
            out += f".{part}"
    return out or "(top level)"


def _format_error(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-after")))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key (check its spelling against the recipe reference in README.md)"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return f"{_loc(loc)}: {msg}"


def load_recipe(path: str | Path) -> Recipe:
    """Read, validate and resolve a recipe. Raises RecipeError naming the file and the field."""
    path = Path(path).resolve()
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found", "pass the path of a recipe.toml")
    with path.open("rb") as f:
        raw_bytes = f.read(MAX_TOML_BYTES + 1)  # one byte over the cap is enough to refuse it
    try:
        check_toml_limits(raw_bytes, "the recipe")  # size and nesting first: tomllib recurses per level
        raw = tomllib.loads(raw_bytes.decode("utf-8"))
    except LimitExceeded as exc:
        raise RecipeError(f"{path}: {exc}", "a recipe is a small, flat TOML file (README: Recipe reference)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise RecipeError(f"{path}: not valid TOML: {exc}") from None
    try:
        recipe = Recipe.model_validate({**raw, "path": path, "sha256": hashlib.sha256(raw_bytes).hexdigest()})
    except ValidationError as exc:
        problems = [_format_error(e) for e in exc.errors()]
        raise RecipeError(
            f"{path}: " + ("; ".join(problems) if len(problems) == 1 else "\n  " + "\n  ".join(problems))
        ) from None
    _check_files(recipe)
    return recipe


def _check_files(recipe: Recipe) -> None:
    wanted: list[tuple[str, Path | None]] = [
        ("[model].weights", recipe.model.weights),
        ("[model].labels", recipe.model.labels),
        ("[data].validation", recipe.data.validation),
        ("[data].calibration", recipe.data.calibration),
        ("[data].training", recipe.data.training),
    ]
    finetune = recipe.prune.finetune if recipe.prune else None
    if finetune is not None:
        if finetune.data is None and recipe.data.training is None:
            raise RecipeError(
                f"{recipe.path}: [prune.finetune]: fine-tuning needs training data, and neither "
                "[prune.finetune].data nor [data].training names a file",
                "set [data].training (an .npz like the validation data, with labels) or drop [prune.finetune]",
            )
        wanted.append(("[prune.finetune].data", finetune.data))
    qat = recipe.quantization.finetune
    if qat is not None:
        if qat.data is None and recipe.data.training is None:
            raise RecipeError(
                f"{recipe.path}: [quantization.finetune]: int8 fine-tuning needs training data, and neither "
                "[quantization.finetune].data nor [data].training names a file",
                "set [data].training (an .npz like the calibration data; labels are not needed) "
                "or drop [quantization.finetune]",
            )
        wanted.append(("[quantization.finetune].data", qat.data))
    source = recipe.model.source
    if source.endswith((".pt", ".pt2")):
        wanted.append(("[model].source", Path(source)))
    else:
        module, _, function = source.partition(":")
        if not module or not function:
            raise RecipeError(f"{recipe.path}: [model].source: {source!r} must be 'module:function'")
    for field, rel in wanted:
        if rel is None:
            continue
        full = recipe.resolve(rel)
        check_inside_folder(recipe.path, field, rel, full)
        is_data = field.endswith(("[data].validation", "[data].calibration", "[data].training", ".data"))
        if not (full.is_file() or (is_data and full.is_dir())):  # data may be a folder (mobex.datasources)
            raise RecipeError(
                f"{recipe.path}: {field}: file not found: {full}",
                "paths in a recipe are relative to the recipe's folder",
            )
    labels = recipe.labels()
    if labels is not None and not labels:
        raise RecipeError(f"{recipe.path}: [model].labels: the labels file is empty")
    if labels is not None and len(set(labels)) != len(labels):
        raise RecipeError(f"{recipe.path}: [model].labels: the labels file has duplicate labels")
