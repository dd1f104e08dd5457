"""Core ML inputs and outputs the way Apple's APIs expect them: image inputs and classifier outputs.

- Image input (`ct.ImageType`): when the recipe's `[preprocessing]` is an image contract that says how
  pixels become the tensor (`scale` given, layout NCHW) and the input is float. Core ML then takes a
  picture (CVPixelBuffer / CGImage, what Vision and the camera give) of the crop size, in the contract's
  colour order, and the program computes `pixel * scale + bias` itself. Core ML's scale is one number
  for all channels: when `std` differs per channel, the ImageType divides by the contract's `scale` and a
  small module inside the model does `(x - mean) / std`. The contract itself is stored in the model's
  metadata (`mobex.preprocessing`, JSON), so the reference interpreter can feed the same pictures.
- Classifier (`ct.ClassifierConfig`): for `task = "classification"` with labels and one output. The
  model then has `classLabel` (the top label) and `classLabel_probs` (label -> score) outputs, and
  Vision's `VNCoreMLRequest` returns `VNClassificationObservation`s. The scores are the model's own
  output values (softmax them inside the model for probabilities): a second output that kept the raw
  scores next to softmaxed ones hits an IndexError in coremltools 9's classifier export.
The image input is on by default (`[ios] image_input = false` turns it off). The classifier is on by default
for image classifiers, the models Vision serves (`[ios] classifier` unset), and can be asked for
(`classifier = true`) or refused (`false`) for any classifier: without Vision, a classifier's outputs change
name on iOS (`classLabel`, `classLabel_probs`) while Android keeps the recipe's, so it is opt-in there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from mobex.preprocessing import METADATA_KEY, ImagePreprocessing, NoPreprocessing, PreprocessingContract

CLASS_LABEL = "classLabel"  # coremltools' (and Create ML's) name of the predicted label output
_COLOR_LAYOUTS = {"RGB": "RGB", "BGR": "BGR", "L": "GRAYSCALE"}  # contract color -> ct.colorlayout member


@dataclass(frozen=True)
class CoreMLInterface:
    """What the converted model declares: which input is an image (and how), whether it is a classifier."""

    image_input: str | None = None
    contract: PreprocessingContract = NoPreprocessing()
    classifier_labels: list[str] | None = None

    @property
    def image(self) -> ImagePreprocessing | None:
        return self.contract if isinstance(self.contract, ImagePreprocessing) and self.image_input else None

    def split_scale(self) -> tuple[float, list[float], bool]:
        """(ImageType scale, ImageType bias, whether the model must still divide by a per-channel std)."""
        image = self.image
        assert image is not None and image.scale is not None
        a, b = image.pixel_mapping()
        if max(a) - min(a) <= 1e-9 * max(a):
            return a[0], b, False
        return 1.0 / image.scale, [0.0] * image.channels, True

    def ct_input(self, name: str, shape: tuple[int, ...]) -> Any:
        import coremltools as ct

        scale, bias, _ = self.split_scale()
        layout = getattr(ct.colorlayout, _COLOR_LAYOUTS[self.image.color] if self.image else "RGB")  # type: ignore[union-attr]
        return ct.ImageType(
            name=name, shape=shape, scale=scale, bias=bias if len(bias) > 1 else bias[0], color_layout=layout
        )

    def wrap(self, model: Any, input_names: list[str]) -> Any:
        """The model to convert: the original, or with the per-channel `(x - mean) / std` in front."""
        if self.image is None or not self.split_scale()[2]:
            return model
        import torch

        image = self.image
        mean = torch.tensor(image.per_channel("mean"), dtype=torch.float32).reshape(1, -1, 1, 1)
        std = torch.tensor(image.per_channel("std"), dtype=torch.float32).reshape(1, -1, 1, 1)
        return _normalizing(model, mean, std, input_names.index(self.image_input))

    def apply(self, model: Any, example_inputs: dict[str, Any], ct_inputs: list[Any]) -> tuple[Any, list[str]]:
        """Swap the image input's TensorType for an ImageType (in `ct_inputs`, in place); return the model to
        convert and notes for the report."""
        notes = []
        if self.image is not None and self.image_input is not None:
            names = list(example_inputs)
            ct_inputs[names.index(self.image_input)] = self.ct_input(
                self.image_input, tuple(example_inputs[self.image_input].shape)
            )
            scale, bias, in_model = self.split_scale()
            where = ", then (x - mean) / std per channel in the model" if in_model else ""
            notes.append(
                f"input {self.image_input!r} is a Core ML image ({self.image.color}): "
                f"pixel * {scale:.6g} + {[round(b, 6) for b in bias]}{where}"
            )
            model = self.wrap(model, names)
        if self.classifier_labels is not None:
            notes.append(
                f"classifier: outputs {CLASS_LABEL} and {CLASS_LABEL}_probs over {len(self.classifier_labels)} labels"
            )
        return model, notes

    def output_descriptions(self, given: dict[str, str], output_names: list[str]) -> dict[str, str]:
        """The recipe's output descriptions under the names the model has (a classifier renames its output)."""
        if self.classifier_labels is None:
            return dict(given)
        scores = given.get(output_names[0], "the model's score for each label")
        return {CLASS_LABEL: "the label with the highest score", f"{CLASS_LABEL}_probs": scores}

    def classifier_config(self) -> Any:
        if self.classifier_labels is None:
            return None
        import coremltools as ct

        return ct.ClassifierConfig(list(self.classifier_labels), predicted_feature_name=CLASS_LABEL)

    def metadata(self) -> dict[str, str]:
        """User-defined metadata entries the runtime side (mobex.runtime.mil.image_io) reads back."""
        if isinstance(self.contract, NoPreprocessing):
            return {}
        return {METADATA_KEY: json.dumps(self.contract.record(), sort_keys=True)}


def plan_interface(
    contract: PreprocessingContract,
    example_inputs: dict[str, Any],
    *,
    task: str,
    labels: list[str] | None,
    output_count: int,
    image_input: bool = True,
    classifier: bool | None = None,
) -> CoreMLInterface:
    """Decide the interface from the contract, the inputs and the task (see the module docstring)."""
    names = list(example_inputs)
    image_name = None
    if image_input and isinstance(contract, ImagePreprocessing) and contract.describes_pixels:
        target = contract.input_name(names)
        tensor = example_inputs.get(target) if target else None
        if tensor is not None and contract.layout == "NCHW" and tensor.is_floating_point() and tensor.dim() == 4:
            image_name = target if int(tensor.shape[1]) == contract.channels else None
    wanted = classifier if classifier is not None else image_name is not None  # unset: image classifiers only
    labelled = wanted and task == "classification" and labels is not None and output_count == 1
    return CoreMLInterface(image_name, contract, list(labels) if labelled and labels else None)


def _normalizing(model: Any, mean: Any, std: Any, index: int) -> Any:
    import torch

    class Normalized(torch.nn.Module):
        """`(x - mean) / std` per channel, then the model: the part of the contract Core ML's scale cannot say."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.register_buffer("mean", mean)
            self.register_buffer("std", std)

        def forward(self, *inputs: torch.Tensor) -> Any:
            values = list(inputs)
            values[index] = (values[index] - self.mean) / self.std
            return self.model(*values)

    return Normalized().eval()
