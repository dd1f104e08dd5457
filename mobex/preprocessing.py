"""The preprocessing contract: how raw data (a picture, a sound, a table row) becomes the model's input.

One typed `[preprocessing]` table in the recipe says it once. mobex applies it to folder and table data
(mobex.datasources), checks the data against the value range it implies (mobex.data), records it in
the manifest (`preprocessing`, the same keys with every default written out), embeds it in both model
formats (TFLite metadata normalisation, Core ML image inputs' scale and bias) and the app applies the
same steps to its own pictures. The steps of each kind are spelled out in docs/preprocessing.md, so an
app can re-implement them without reading this code.

Kinds, chosen by `kind`:
- `image`: resize, centre crop, colour order, `pixel / scale`, `(x - mean) / std`, layout;
- `audio`: sample rate, mono mixdown, windows of `window` samples every `hop`, optional log-mel;
- `tabular`: named columns (`feature_names`, or `columns` per input) in order;
- `none` (no `kind`): only a description and an optional value `range`.
Every kind keeps the older `range = [lo, hi]` (or one range per input) and `description` keys.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, field_validator, model_validator

METADATA_KEY = "mobex.preprocessing"  # the contract (manifest form, JSON) in a model's own metadata (Core ML)
PIXEL_MAX = 255.0  # 8-bit pictures: what JPEG/PNG/WebP decode to and what Core ML / Android cameras give
Range = tuple[float, float]


class _Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    # [lo, hi] for every float input, or one [lo, hi] per input name (the data check, mobex.data).
    range: list[float] | dict[str, list[float]] | None = None

    @field_validator("range")
    @classmethod
    def _range(cls, v: list[float] | dict[str, list[float]] | None) -> Any:
        pairs = v.items() if isinstance(v, dict) else [("", v)] if v is not None else []
        for name, pair in pairs:
            if len(pair) != 2 or not pair[0] < pair[1]:
                where = f"{name}: " if name else ""
                raise ValueError(
                    f"{where}expected [lo, hi] with lo < hi, got {pair!r}; write e.g. range = [0.0, 1.0], "
                    "or one range per input: [preprocessing.range] image = [0.0, 1.0]"
                )
        return v

    def value_ranges(self) -> dict[str, Range] | Range | None:
        """The declared range: one pair for every float input, a pair per input, or None."""
        if self.range is None:
            return None
        if isinstance(self.range, dict):
            return {k: (float(a), float(b)) for k, (a, b) in self.range.items()}
        return float(self.range[0]), float(self.range[1])

    def input_name(self, inputs: list[str]) -> str | None:
        """The input this contract's data feeds (image and audio kinds); None for kinds without one."""
        return None

    def check_inputs(self, inputs: dict[str, list[int]]) -> None:
        """Raise ValueError when the contract names inputs the recipe does not have."""
        if isinstance(self.range, dict):
            unknown = sorted(set(self.range) - set(inputs))
            if unknown:
                raise ValueError(f"[preprocessing].range: no input named {', '.join(map(repr, unknown))}")

    def record(self) -> dict[str, Any]:
        """The manifest's `preprocessing`: every key, defaults written out, JSON values."""
        return self.model_dump(mode="json")


class NoPreprocessing(_Contract):
    """No steps: the data is already what the model takes (a description and a range at most)."""

    kind: Literal["none"] = "none"


class _OneInput(_Contract):
    input: str | None = None  # the input the decoded data feeds; default: the first [[inputs]]

    def input_name(self, inputs: list[str]) -> str | None:
        return self.input or (inputs[0] if inputs else None)

    def check_inputs(self, inputs: dict[str, list[int]]) -> None:
        super().check_inputs(inputs)
        if self.input is not None and self.input not in inputs:
            raise ValueError(f"[preprocessing].input: no input named {self.input!r} (inputs: {', '.join(inputs)})")


Size = PositiveInt | list[PositiveInt]


def _size_pair(v: Size | None, key: str) -> tuple[int, int] | None:
    if v is None or isinstance(v, int):
        return None if v is None else (v, v)
    if len(v) != 2:
        raise ValueError(f"{key}: give one number or [height, width], got {v}")
    return int(v[0]), int(v[1])


class ImagePreprocessing(_OneInput):
    """A picture to a tensor: resize, centre crop, colour order, `(pixel / scale - mean) / std`, layout.

    `resize = 256` scales the shorter side to 256 (the longer one to `int(256 * long / short)`, as
    torchvision's Resize does); `resize = [h, w]` scales to exactly that size. `crop` cuts the centre
    (top = round((H - h) / 2)). Without `scale` the pixel mapping is not known (older recipes): mobex then
    neither decodes pictures nor declares a Core ML image input.
    """

    kind: Literal["image"]
    resize: Size | None = None
    crop: Size | None = None
    interpolation: Literal["bilinear", "bicubic", "nearest", "lanczos"] = "bilinear"
    color: Literal["RGB", "BGR", "L"] = "RGB"  # L: grayscale, one channel
    scale: float | None = Field(default=None, gt=0)
    mean: list[float] = Field(default_factory=lambda: [0.0], min_length=1)
    std: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    layout: Literal["NCHW", "NHWC"] = "NCHW"

    @model_validator(mode="after")
    def _consistent(self) -> ImagePreprocessing:
        _size_pair(self.resize, "resize")
        _size_pair(self.crop, "crop")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std: every value must be > 0, got {self.std}")
        channels = self.channels
        for key in ("mean", "std"):
            if len(getattr(self, key)) not in (1, channels):
                raise ValueError(f"{key}: give 1 value or {channels} (one per {self.color} channel)")
        return self

    @property
    def channels(self) -> int:
        return 1 if self.color == "L" else 3

    @property
    def describes_pixels(self) -> bool:
        """True when the whole mapping from 8-bit pixels to the tensor is known (`scale` given)."""
        return self.scale is not None

    def resize_pair(self) -> tuple[int, int] | None:
        return _size_pair(self.resize, "resize")

    def crop_pair(self) -> tuple[int, int] | None:
        return _size_pair(self.crop, "crop")

    def per_channel(self, key: Literal["mean", "std"]) -> list[float]:
        values = getattr(self, key)
        return list(values) * self.channels if len(values) == 1 else list(values)

    def pixel_mapping(self) -> tuple[list[float], list[float]]:
        """(a, b) per channel with tensor = pixel * a + b: what Core ML's scale/bias and TFLite's
        normalisation express. Needs `scale`."""
        assert self.scale is not None
        mean, std = self.per_channel("mean"), self.per_channel("std")
        return [1.0 / (self.scale * s) for s in std], [-m / s for m, s in zip(mean, std, strict=True)]

    def implied_range(self) -> Range | None:
        """The values 0..255 pixels map to, over all channels (None without `scale`)."""
        if self.scale is None:
            return None
        a, b = self.pixel_mapping()
        ends = [v for ai, bi in zip(a, b, strict=True) for v in (bi, PIXEL_MAX * ai + bi)]
        return min(ends), max(ends)

    def value_ranges(self) -> dict[str, Range] | Range | None:
        declared = super().value_ranges()
        return declared if declared is not None else self.implied_range()

    def sample_shape(self, crop_fallback: tuple[int, int] | None = None) -> list[int] | None:
        """[C, H, W] or [H, W, C] of one picture after the steps (None when the size is not fixed)."""
        size = self.crop_pair() or (self.resize_pair() if isinstance(self.resize, list) else None) or crop_fallback
        if size is None:
            return None
        h, w = size
        return [self.channels, h, w] if self.layout == "NCHW" else [h, w, self.channels]

    def check_inputs(self, inputs: dict[str, list[int]]) -> None:
        super().check_inputs(inputs)
        name = self.input_name(list(inputs))
        shape = inputs.get(name) if name else None
        if shape is None or self.scale is None:
            return
        want = self.sample_shape(crop_fallback=tuple(_hw(shape, self.layout)))
        if len(shape) != 4 or want != list(shape[1:]):
            raise ValueError(
                f"[preprocessing]: the image steps give samples of shape {want} ({self.layout}, "
                f"{self.color}), but input {name!r} has shape {shape}; fix crop/resize, color or layout"
            )


def _hw(shape: list[int], layout: str) -> list[int]:
    if len(shape) != 4:
        return [0, 0]
    return list(shape[2:4]) if layout == "NCHW" else list(shape[1:3])


class AudioPreprocessing(_OneInput):
    """A sound to a tensor: resample to `sample_rate`, average the channels (mono), cut windows of
    `window` samples every `hop`, then either the waveform itself or its log-mel spectrogram."""

    kind: Literal["audio"]
    sample_rate: PositiveInt
    mono: bool = True
    window: PositiveInt  # samples per model input
    hop: PositiveInt | None = None  # samples between window starts; default: window (no overlap)
    features: Literal["waveform", "log-mel"] = "waveform"
    n_fft: PositiveInt = 400
    mel_hop: PositiveInt = 160
    n_mels: PositiveInt = 64
    f_min: float = Field(default=0.0, ge=0)
    f_max: float | None = Field(default=None, gt=0)
    log_offset: float = Field(default=1e-6, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> AudioPreprocessing:
        if self.features == "log-mel":
            if self.n_fft > self.window:
                raise ValueError(f"n_fft ({self.n_fft}) is longer than the window ({self.window} samples)")
            top = self.f_max if self.f_max is not None else self.sample_rate / 2
            if not self.f_min < top <= self.sample_rate / 2:
                raise ValueError(f"need f_min < f_max <= sample_rate / 2, got {self.f_min}, {top}")
        return self

    @property
    def hop_samples(self) -> int:
        return self.hop or self.window

    def mel_frames(self) -> int:
        return 1 + (self.window - self.n_fft) // self.mel_hop

    def sample_size(self) -> int:
        """Values per model sample: the window, or n_mels x frames."""
        return self.window if self.features == "waveform" else self.n_mels * self.mel_frames()

    def check_inputs(self, inputs: dict[str, list[int]]) -> None:
        super().check_inputs(inputs)
        name = self.input_name(list(inputs))
        shape = inputs.get(name) if name else None
        if shape is None:
            return
        size = 1
        for d in shape[1:]:
            size *= d
        if size != self.sample_size():
            what = (
                f"{self.window} samples"
                if self.features == "waveform"
                else (f"{self.n_mels} mels x {self.mel_frames()} frames")
            )
            raise ValueError(
                f"[preprocessing]: one {self.features} window is {what} = {self.sample_size()} values, "
                f"but input {name!r} of shape {shape} takes {size} per sample"
            )


class TabularPreprocessing(_Contract):
    """Table rows to tensors: the named columns, in order, feed each input (float32 or the input's dtype)."""

    kind: Literal["tabular"]
    feature_names: list[str] | None = None  # the columns of the only (or first) input, in order
    columns: dict[str, list[str]] = Field(default_factory=dict)  # input name -> its columns, for several inputs

    def columns_of(self, inputs: list[str]) -> dict[str, list[str]]:
        """input name -> column names; empty when the contract names none."""
        if self.columns:
            return dict(self.columns)
        return {inputs[0]: list(self.feature_names)} if self.feature_names and inputs else {}

    def check_inputs(self, inputs: dict[str, list[int]]) -> None:
        super().check_inputs(inputs)
        unknown = sorted(set(self.columns) - set(inputs))
        if unknown:
            raise ValueError(f"[preprocessing].columns: no input named {', '.join(map(repr, unknown))}")


PreprocessingContract = _Contract
KINDS: dict[str, type[_Contract]] = {
    "none": NoPreprocessing,
    "image": ImagePreprocessing,
    "audio": AudioPreprocessing,
    "tabular": TabularPreprocessing,
}


def parse_preprocessing(raw: Any) -> _Contract:
    """The `[preprocessing]` table as its typed contract; ValueError naming the key on any mistake."""
    if isinstance(raw, _Contract):
        return raw
    if raw is None:
        return NoPreprocessing()
    if not isinstance(raw, dict):
        raise ValueError(f"expected a table, got {type(raw).__name__}")
    kind = raw.get("kind", "none")
    cls = KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ValueError(f"kind = {kind!r} is not a preprocessing kind; use one of {', '.join(KINDS)}")
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key for kind = {kind!r} (see docs/preprocessing.md)"
            problems.append(f"{where}: {msg}" if where else msg)
        raise ValueError("; ".join(problems)) from None
