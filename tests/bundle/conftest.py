"""Shared fixtures for the bundle tests: real keys, a staging folder with a small fake model, zip surgery."""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from mobex.artifacts import QuantParams, TensorSpec
from mobex.bundle.keys import generate_keypair
from mobex.bundle.manifest import Manifest, iso_utc, model_section

EPOCH = 1_700_000_000  # 2023-11-14T22:13:20Z
LABELS = ["zero", "one", "two"]


@pytest.fixture(scope="session")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "release.pem")


@pytest.fixture(scope="session")
def other_keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("other-keys") / "attacker.pem")


def _pseudo_random(n: int, seed: bytes) -> bytes:
    """Deterministic incompressible bytes standing in for model weights."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


@pytest.fixture
def make_staging() -> Callable[..., Path]:
    """Write a staging folder: model (a .tflite file or a nested .mlpackage tree), labels, report."""

    def make(root: Path, platform: str = "android") -> Path:
        if platform == "android":
            files = {"model/digits.tflite": _pseudo_random(20_000, b"tflite")}
        else:
            pkg = "model/Digits.mlpackage"
            files = {
                f"{pkg}/Manifest.json": b'{"fileFormatVersion": "1.0.0"}\n',
                f"{pkg}/Data/com.apple.CoreML/model.mlmodel": _pseudo_random(3_000, b"mlmodel"),
                f"{pkg}/Data/com.apple.CoreML/weights/weight.bin": _pseudo_random(20_000, b"weights"),
            }
        files["assets/labels.txt"] = ("\n".join(LABELS) + "\n").encode()
        files["assets/reference_stats.json"] = b'{"mean": [0.1, 0.2]}\n'
        files["report.json"] = b'{"variants": []}\n'
        for rel, data in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        return root

    return make


@pytest.fixture
def make_manifest() -> Callable[..., Manifest]:
    def make(platform: str = "android", **overrides) -> Manifest:
        ios = platform == "ios"
        fields = dict(
            name="digits",
            version="1.2.3",
            platform=platform,
            created=iso_utc(EPOCH),
            model=model_section(
                path="model/Digits.mlpackage" if ios else "model/digits.tflite",
                format="mlpackage" if ios else "tflite",
                quantization="fp16" if ios else "int8",
                inputs=[TensorSpec("image", (1, 1, 8, 8), "int8", QuantParams(0.0078125, -128))],
                outputs=[TensorSpec("logits", (1, 3), "float32")],
                minimum_os={"ios": "iOS16"} if ios else {"android_min_sdk": 24},
            ),
            labels=LABELS,
            preprocessing={"normalization": {"mean": [0.5], "std": [0.25]}},
            task="classification",
            metrics={"accuracy": 0.97, "snr_db": 41.5},
            provenance={"commit": "0" * 40, "dirty": False, "recipe_sha256": "a" * 64},
        )
        fields.update(overrides)
        return Manifest(**fields)

    return make


@pytest.fixture
def rewrite_zip() -> Callable[..., Path]:
    """Copy a zip entry by entry, dropping, transforming or adding members (raw zipfile, no checks)."""

    def rewrite(
        src: Path,
        dst: Path,
        *,
        drop: tuple[str, ...] = (),
        change: dict[str, Callable[[bytes], bytes]] | None = None,
        add: tuple[tuple[zipfile.ZipInfo | str, bytes], ...] = (),
    ) -> Path:
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Duplicate name" when a test adds one on purpose
            for info in zin.infolist():
                if info.filename in drop:
                    continue
                data = zin.read(info)
                if change and info.filename in change:
                    data = change[info.filename](data)
                zout.writestr(info, data)
            for name_or_info, data in add:
                zout.writestr(name_or_info, data)
        return dst

    return rewrite


def flip_byte(data: bytes, index: int = -1) -> bytes:
    """The same bytes with one bit flipped (default: in the middle)."""
    i = len(data) // 2 if index < 0 else index
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


@pytest.fixture
def flip() -> Callable[[bytes], bytes]:
    return flip_byte
