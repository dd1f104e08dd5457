"""Core ML's native I/O forms in the reference interpreter: image inputs and classifier outputs.

An image input (spec `imageType`) is, inside the ML program, a float tensor of pixel values 0..255
in the declared colour order (NCHW); the program applies the ImageType's scale and bias itself.
Feeds may be given two ways:
- uint8 pixels, (N, C, H, W) or (N, H, W, C): used as they are, as Core ML would from a CVPixelBuffer;
- float arrays in the model's own input space (what mobex's validation data holds, the same feed the
  torch model and the TFLite model get): turned back into pixels with the image contract the package
  carries (`mobex.preprocessing` metadata), `pixel = (x - b) / a` for the contract's `x = pixel * a + b`.
The program's own mul/add then map the pixels forward again, so parity checks the ImageType's scale
and bias (and any per-channel normalisation in the model) against the contract.

A classifier (spec `predictedFeatureName`/`predictedProbabilitiesName`, the `classify` op) returns the
label and a dictionary label -> score. `run` gives the scores as an array in the classes' order (the
program's score tensor, comparable with the torch model's output); `run_native` gives the dictionary
and the label, as Core ML's `predict` and Vision do, after checking that the label is the top score.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mobex.artifacts import TensorSpec
from mobex.errors import DataError
from mobex.preprocessing import METADATA_KEY

from .ops_common import register


@register("classify")
def _classify(a: dict[str, Any], info: Any) -> tuple[str, dict[str, float]]:
    """MIL `classify`: the top class label and {label: score}, scores in the classes' order."""
    scores = np.asarray(a["probabilities"], dtype=np.float64).reshape(-1)
    classes = a["classes"]
    names = [str(c) for c in (np.asarray(classes).reshape(-1) if not isinstance(classes, str) else [classes])]
    if len(names) != scores.size:
        raise ValueError(f"classify: {len(names)} classes for {scores.size} scores")
    return names[int(np.argmax(scores))], dict(zip(names, (float(s) for s in scores), strict=True))


@dataclass(frozen=True)
class ImageFeed:
    """One image input: its size and colour space, and the contract's pixel -> tensor mapping if known."""

    name: str
    channels: int
    height: int
    width: int
    color_space: str
    mapping: tuple[np.ndarray, np.ndarray] | None  # (a, b) per channel: tensor = pixel * a + b

    def pixels(self, value: Any) -> np.ndarray:
        """The feed as float32 pixel values (N, C, H, W), the form the program's input takes."""
        arr = np.asarray(value)
        chw, hwc = (self.channels, self.height, self.width), (self.height, self.width, self.channels)
        if arr.ndim != 4 or tuple(arr.shape[1:]) not in (chw, hwc):
            raise DataError(
                f"image input {self.name!r} takes (N, {self.channels}, {self.height}, {self.width}) or "
                f"(N, {self.height}, {self.width}, {self.channels}) values, got {tuple(arr.shape)}"
            )
        if tuple(arr.shape[1:]) != chw:
            arr = arr.transpose(0, 3, 1, 2)
        if arr.dtype == np.uint8:
            return arr.astype(np.float32)
        if self.mapping is None:
            raise DataError(
                f"image input {self.name!r}: the package carries no image contract to map float values to pixels",
                hint="feed uint8 pixels",
            )
        a, b = self.mapping
        shape = (1, -1, 1, 1)
        return ((arr.astype(np.float64) - b.reshape(shape)) / a.reshape(shape)).astype(np.float32)

    def pil_image(self, value: Any) -> Any:
        """The feed as the PIL image `MLModel.predict` takes for an image input (one picture, pixels rounded).

        For Core ML's own runtime on macOS: NOT exercised in this project's CI (Linux cannot predict)."""
        from PIL import Image

        pixels = self.pixels(value)
        if pixels.shape[0] != 1:
            raise DataError(
                f"image input {self.name!r}: Core ML takes one picture per prediction, got {pixels.shape[0]}"
            )
        hwc = np.clip(np.rint(pixels[0]), 0, 255).astype(np.uint8).transpose(1, 2, 0)
        return Image.fromarray(hwc[..., 0] if self.channels == 1 else hwc)


@dataclass
class NativeIO:
    """The spec's image inputs and classifier outputs, and how to map feeds and results (module docstring)."""

    images: dict[str, ImageFeed] = field(default_factory=dict)
    label_output: str | None = None
    scores_output: str | None = None

    @classmethod
    def read(cls, spec: Any) -> NativeIO:
        contract = _contract(spec)
        images = {}
        for feature in spec.description.input:
            if feature.type.WhichOneof("Type") == "imageType":
                images[feature.name] = _image_feed(feature, contract)
        label = spec.description.predictedFeatureName or None
        scores = spec.description.predictedProbabilitiesName or None
        return cls(images, label, scores) if label and scores else cls(images)

    @property
    def is_classifier(self) -> bool:
        return self.scores_output is not None

    def feed(self, name: str, value: Any) -> Any:
        image = self.images.get(name)
        return value if image is None else image.pixels(value)

    def outputs(self, outputs: list[TensorSpec]) -> list[TensorSpec]:
        """The runner's outputs: the label and score dictionary become one score array (float32)."""
        if not self.is_classifier:
            return outputs
        out = []
        for spec in outputs:
            if spec.name == self.label_output:
                continue
            if spec.name == self.scores_output:
                spec = TensorSpec(name=spec.name, shape=(1, -1), dtype="float32")
            out.append(spec)
        return out

    def results(self, names: list[str], values: list[Any]) -> list[np.ndarray]:
        """`run`'s list: classifier outputs as one score array in the classes' order, the rest unchanged."""
        if not self.is_classifier:
            return values
        native = self.native(names, values)
        out = []
        for name, value in zip(names, values, strict=True):
            if name == self.label_output:
                continue
            if name == self.scores_output:
                value = np.array([list(native[name].values())], dtype=np.float32)
            out.append(value)
        return out

    def native(self, names: list[str], values: list[Any]) -> dict[str, Any]:
        """{output name: value} as Core ML returns them: str label, {label: score} dict, arrays."""
        out = {name: _plain(value) for name, value in zip(names, values, strict=True)}
        if self.is_classifier:
            label, scores = out[self.label_output], out[self.scores_output]
            if label != max(scores, key=scores.get):
                raise DataError(f"classifier output {self.label_output}={label!r} is not the top score of {scores}")
        return out


def _plain(value: Any) -> Any:
    arr = np.asarray(value)
    if arr.dtype == object and arr.ndim == 0:
        return arr.item()
    if arr.dtype.kind in "US" and arr.ndim == 0:
        return str(arr)
    return value


def _contract(spec: Any) -> Any:
    raw = spec.description.metadata.userDefined.get(METADATA_KEY)
    if not raw:
        return None
    from mobex.preprocessing import ImagePreprocessing, parse_preprocessing

    contract = parse_preprocessing(json.loads(raw))
    return contract if isinstance(contract, ImagePreprocessing) and contract.describes_pixels else None


def _image_feed(feature: Any, contract: Any) -> ImageFeed:
    from coremltools.proto import FeatureTypes_pb2

    image = feature.type.imageType
    space = FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace)
    channels = 1 if space.startswith("GRAYSCALE") else 3
    mapping = None
    if contract is not None and contract.channels == channels:
        a, b = contract.pixel_mapping()
        mapping = (np.array(a, np.float64), np.array(b, np.float64))
    return ImageFeed(feature.name, channels, int(image.height), int(image.width), space, mapping)
