"""TFLite I/O tensor names and metadata (mobex.converters.tflite_names / tflite_metadata), on every variant."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mobex.converters.tflite import convert_tflite
from mobex.converters.tflite_metadata import TfliteMetadata, apply_model_contract, read_metadata
from mobex.converters.tflite_names import WRAPPER_PREFIX, io_tensor_names
from mobex.preprocessing import parse_preprocessing
from mobex.runtime.litert import SIGNATURE_KEY
from mobex.targets.tflite import quantize_tflite

pytestmark = pytest.mark.slow  # one litert-torch conversion (~15 s) and three quantizations

CONTRACT = parse_preprocessing(
    {"kind": "image", "resize": 36, "crop": 32, "color": "BGR", "scale": 255.0, "mean": [0.5], "std": [0.25]}
)
META = TfliteMetadata(
    name="tiny", version="2.1.0", description="a tiny CNN", author="mobex tests", license="MIT",
    task="classification", labels=["cat", "dog", "émeu"], preprocessing=CONTRACT,
    input_descriptions={"pixels": "a 32x32 BGR picture"},
)  # fmt: skip


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(pixels)).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tflite") / "tiny-fp32.tflite"
    example = {"pixels": torch.randn(1, 3, 32, 32)}
    return convert_tflite(Tiny(), example, out, output_names=["scores"], metadata=META)


def test_tensors_have_the_recipe_names_and_no_wrapper_paths(base) -> None:
    from ai_edge_litert import schema_py_generated as schema

    data = base.path.read_bytes()
    assert io_tensor_names(data) == (["pixels"], ["scores"])
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    names = [graph.Tensors(i).Name().decode() for i in range(graph.TensorsLength())]
    assert not [n for n in names if WRAPPER_PREFIX in n]


def test_the_metadata_reads_back(base) -> None:
    meta = read_metadata(base.path.read_bytes())
    assert (meta["name"], meta["version"], meta["author"], meta["license"]) == ("tiny", "2.1.0", "mobex tests", "MIT")
    assert meta["description"] == "a tiny CNN" and meta["min_parser_version"] == "1.0.0"
    (pixels,) = meta["inputs"]
    assert pixels["name"] == "pixels" and pixels["description"] == "a 32x32 BGR picture"
    assert pixels["content"] == {"image": {"color_space": "UNKNOWN"}}  # the schema has no BGR colour space
    # (pixel - 127.5) / 63.75 == (pixel / 255 - 0.5) / 0.25: the contract in the schema's pixel units.
    assert pixels["normalization"] == {"mean": [127.5] * 3, "std": [63.75] * 3}
    assert pixels["range"] == {"min": [-2.0] * 3, "max": [2.0] * 3}
    (scores,) = meta["outputs"]
    assert scores["associated_files"] == [{"name": "labels.txt", "type": "TENSOR_AXIS_LABELS"}]
    assert meta["files"] == {"labels.txt": "cat\ndog\némeu\n".encode()}


@pytest.mark.parametrize("variant", ["fp16", "dynamic-int8", "int8"])
def test_every_variant_carries_names_and_metadata(base, variant: str, tmp_path: Path) -> None:
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    calibration = [{"pixels": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(8)]
    q = quantize_tflite(base, variant, tmp_path / f"tiny-{variant}.tflite", calibration=calibration,
                        int8_io=variant == "int8")  # fmt: skip
    data = q.path.read_bytes()
    assert io_tensor_names(data) == (["pixels"], ["scores"])
    assert read_metadata(data) == read_metadata(base.path.read_bytes())
    runner = Interpreter(model_content=data).get_signature_runner(SIGNATURE_KEY)
    sample = calibration[0]["pixels"]
    if variant == "int8":  # int8 I/O: quantize the feed with the input's own scale and zero point
        detail = runner.get_input_details()["pixels"]
        scale, zero = detail["quantization"]
        sample = np.clip(np.round(sample / scale + zero), -128, 127).astype(np.int8)
    assert runner(pixels=sample)["scores"].shape == (1, 3)


def test_applying_the_contract_again_gives_the_same_bytes(base) -> None:
    data = base.path.read_bytes()
    again = apply_model_contract(data, META, SIGNATURE_KEY)
    assert again == data  # the old zip and metadata are replaced, not stacked
    bare = apply_model_contract(data, TfliteMetadata(name="x", version="1.0.0"), SIGNATURE_KEY)
    meta = read_metadata(bare)
    assert meta["files"] == {} and meta["inputs"][0]["content"] == {"feature": {}}
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bare))
