"""Image folders: JPEG, PNG and WebP pictures decoded with Pillow and put through the image contract.

The steps are those of `mobex.preprocessing.ImagePreprocessing`, in this order (docs/preprocessing.md):
decode to 8-bit RGB or L; resize (shorter side, or exact [h, w]) with Pillow's filter; centre crop;
reverse the channels for BGR; `(pixel / scale - mean) / std` in float64, then the input's dtype; the
layout (NCHW or NHWC). A uint8 input takes the pixels themselves. Every picture must end up the size
of the input; one that cannot (too small to crop, other channels, truncated) is a bad file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mobex.datasources.base import Check, Problems, RawData, SourceRequest, pick_samples
from mobex.datasources.folders import MediaFolder, class_labels
from mobex.errors import DataError
from mobex.preprocessing import ImagePreprocessing

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
MAX_PIXELS = 100_000_000  # Pillow's decompression-bomb guard, made an error (see Image.MAX_IMAGE_PIXELS)
# Modes that hold the contract's channels without loss (alpha is accepted only when every pixel is opaque).
_RGB_MODES = ("RGB", "RGBA", "P", "PA", "YCbCr", "CMYK", "RGBX")
_GRAY_MODES = ("L", "LA", "1", "I;16", "P", "PA")


class ImageFolder(MediaFolder):
    """A folder of pictures for an input described by `[preprocessing] kind = "image"`."""

    name = "image-folder"
    version = 1
    suffixes = SUFFIXES
    contract = ImagePreprocessing

    def decode(self, request: SourceRequest, files: list[Path]) -> RawData:
        contract = request.recipe.preprocessing
        assert isinstance(contract, ImagePreprocessing)
        spec = _input_spec(request, contract)
        if contract.scale is None and spec.dtype != "uint8":
            raise DataError(
                f"{request.label}: pictures need [preprocessing].scale to become {spec.dtype} values",
                "write scale = 255.0 for a model trained on 0..1 pixels, or scale = 1.0 for 0..255 "
                "(and mean/std if it normalises them)",
            )
        labels, checks = class_labels(request, files)
        keep = pick_samples(len(files), request)
        problems = Problems(request)
        samples, kept = [], []
        for i in keep:
            try:
                samples.append(picture_tensor(files[i], contract, tuple(spec.shape[1:]), spec.dtype))
                kept.append(i)
            except BadPicture as exc:
                problems.add(files[i], str(exc))
        checks += problems.settle()
        if not samples:
            raise DataError(f"{request.label}: no picture could be used")
        checks.append(_summary(request, len(kept), len(files), contract))
        arrays = {spec.name: np.stack(samples)}
        return RawData(arrays, labels[np.array(kept)] if labels is not None else None, checks)


class BadPicture(Exception):
    """A picture that cannot become a model input; the message says why."""


def picture_tensor(path: Path, contract: ImagePreprocessing, sample_shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """One picture through the contract's steps, shaped like one sample of the input."""
    pixels = picture_pixels(path, contract)
    if contract.color == "BGR":
        pixels = pixels[..., ::-1]
    if dtype == "uint8":
        values = pixels
    else:
        mean, std = np.array(contract.per_channel("mean")), np.array(contract.per_channel("std"))
        values = ((pixels.astype(np.float64) / contract.scale - mean) / std).astype(dtype)
    tensor = values.transpose(2, 0, 1) if contract.layout == "NCHW" else values
    if tuple(tensor.shape) != sample_shape:
        raise BadPicture(
            f"is {list(tensor.shape)} ({contract.layout}) after resize/crop, the input takes {list(sample_shape)}: "
            "set [preprocessing] resize and crop so that every picture ends up that size"
        )
    return np.ascontiguousarray(tensor)


def picture_pixels(path: Path, contract: ImagePreprocessing) -> np.ndarray:
    """Decode, check the channels, resize and centre-crop: uint8 (H, W, C) in RGB (or L) order."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise BadPicture(f"has {im.width}x{im.height} pixels, more than {MAX_PIXELS}")
                im.load()
                picture = _to_mode(im, contract.color)
    except BadPicture:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise BadPicture(f"cannot be decoded ({type(exc).__name__}: {exc})") from None
    picture = _resize(picture, contract)
    picture = _centre_crop(picture, contract)
    arr = np.asarray(picture, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _to_mode(im, color: str):  # noqa: ANN001, ANN202 - PIL images
    want = "L" if color == "L" else "RGB"
    allowed = _GRAY_MODES if want == "L" else _RGB_MODES
    if im.mode not in allowed:
        channels = len(im.getbands())
        raise BadPicture(
            f"has {channels} channel(s) (mode {im.mode}), the contract wants {color}: convert the picture, or "
            "change [preprocessing].color"
        )
    if "A" in im.getbands() or (im.mode == "P" and "transparency" in im.info):
        alpha = np.asarray(im.convert("RGBA").getchannel("A"))
        if alpha.min() < 255:
            raise BadPicture("has transparent pixels: flatten it onto a background first")
    if im.mode == "P" and want == "L":
        rgb = np.asarray(im.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
            raise BadPicture("is a colour palette picture, the contract wants L (grayscale)")
    return im.convert(want)


def _resample(contract: ImagePreprocessing) -> int:
    from PIL import Image

    return {
        "bilinear": Image.Resampling.BILINEAR,
        "bicubic": Image.Resampling.BICUBIC,
        "nearest": Image.Resampling.NEAREST,
        "lanczos": Image.Resampling.LANCZOS,
    }[contract.interpolation]


def resized_size(width: int, height: int, contract: ImagePreprocessing) -> tuple[int, int]:
    """(width, height) after `resize`: exact [h, w], or the shorter side to N (the longer int(N * long / short))."""
    if contract.resize is None:
        return width, height
    if isinstance(contract.resize, list):
        h, w = contract.resize_pair()  # type: ignore[misc]
        return w, h
    n = contract.resize
    if width <= height:
        return n, int(n * height / width)
    return int(n * width / height), n


def _resize(im, contract: ImagePreprocessing):  # noqa: ANN001, ANN202
    size = resized_size(im.width, im.height, contract)
    return im if size == (im.width, im.height) else im.resize(size, resample=_resample(contract))


def _centre_crop(im, contract: ImagePreprocessing):  # noqa: ANN001, ANN202
    crop = contract.crop_pair()
    if crop is None:
        return im
    ch, cw = crop
    if ch > im.height or cw > im.width:
        raise BadPicture(f"is {im.width}x{im.height} after resize, smaller than the {cw}x{ch} crop")
    top = int(round((im.height - ch) / 2.0))
    left = int(round((im.width - cw) / 2.0))
    return im.crop((left, top, left + cw, top + ch))


def _input_spec(request: SourceRequest, contract: ImagePreprocessing):  # noqa: ANN202 - InputSpec
    inputs = request.recipe.inputs
    name = contract.input_name([i.name for i in inputs])
    if len(inputs) != 1:
        raise DataError(
            f"{request.label}: a picture folder feeds one input, the recipe has {len(inputs)}",
            "use an .npz for models with several inputs",
        )
    return next(i for i in inputs if i.name == name)


def _summary(request: SourceRequest, used: int, listed: int, contract: ImagePreprocessing) -> Check:
    steps = (
        f"resize {contract.resize}, crop {contract.crop}, {contract.color}, scale {contract.scale}, "
        f"mean {contract.mean}, std {contract.std}, {contract.layout}"
    )
    return Check(f"{request.role}.decoded", True, f"{used} of {listed} pictures decoded with Pillow ({steps})")
