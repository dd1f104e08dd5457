"""A zoo of random-init Hugging Face transformers models through Core ML and the MIL reference interpreter.

Each model is built from a small config (no download: configs only, random weights), converted to
Core ML fp32 and fp16 with `mobex.converters.coreml.convert_coreml` (what `mobex build` uses), run
through `MilReferenceRunner` and compared with torch. Prints one row per model:

    model | converts? | fp32 max abs err | fp16 max abs err | fp16 cosine | unsupported ops / error

Usage: python scripts/zoo.py [--only bert,vit] [--json] [--keep DIR]

A conversion that fails is a row with the converter's error, not a crash: those are coremltools /
torch gaps for mobex/converters/coreml_shims.py, not interpreter bugs.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEQ = 16  # token sequence length of the text models


@dataclass
class ZooCase:
    """One zoo model: a builder returning (module, example inputs by name), and whether it is heavy."""

    name: str
    build: Callable[[], tuple[object, dict]]
    slow: bool = False


@dataclass
class ZooResult:
    model: str
    params: int = 0
    converts: dict[str, bool] = field(default_factory=dict)  # precision -> converted?
    max_abs_error: dict[str, float] = field(default_factory=dict)
    rel_error: dict[str, float] = field(default_factory=dict)  # max abs error / max |torch output|
    cosine: dict[str, float] = field(default_factory=dict)
    snr_db: dict[str, float] = field(default_factory=dict)
    unsupported_ops: list[str] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(self.converts.get(p) for p in ("fp32", "fp16")) and not self.unsupported_ops and not self.errors


class _Select:
    """Wrap a transformers model so it returns one tensor (its main output), called with positional inputs."""

    def __new__(cls, model, names: list[str], output: str):  # noqa: ANN001, ANN204
        import torch

        class Selected(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.inner = model

            def forward(self, *args):  # noqa: ANN002, ANN202
                return getattr(self.inner(**dict(zip(names, args, strict=True))), output)

        return Selected().eval()


def _text_inputs() -> dict:
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 100, (1, SEQ), generator=g)
    mask = torch.ones(1, SEQ, dtype=torch.long)
    mask[0, SEQ - 4 :] = 0  # padding, so the attention mask matters
    return {"input_ids": ids, "attention_mask": mask}


def _image(size: int = 64) -> dict:
    import torch

    return {"pixel_values": torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(2))}


def _bert():
    from transformers import BertConfig, BertModel

    cfg = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    inputs = _text_inputs()
    return _Select(BertModel(cfg), list(inputs), "last_hidden_state"), inputs


def _distilbert():
    from transformers import DistilBertConfig, DistilBertModel

    cfg = DistilBertConfig(vocab_size=100, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=64)
    inputs = _text_inputs()
    return _Select(DistilBertModel(cfg), list(inputs), "last_hidden_state"), inputs


def _vit():
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10,
    )  # fmt: skip
    inputs = _image(32)
    return _Select(ViTForImageClassification(cfg), list(inputs), "logits"), inputs


def _mobilevit():
    from transformers import MobileViTConfig, MobileViTForImageClassification

    cfg = MobileViTConfig(
        image_size=64, hidden_sizes=[24, 32, 40], neck_hidden_sizes=[8, 8, 12, 16, 20, 24, 64],
        num_attention_heads=2, num_labels=10,
    )  # fmt: skip
    inputs = _image(64)
    return _Select(MobileViTForImageClassification(cfg), list(inputs), "logits"), inputs


def _mobilenet_v2():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    cfg = MobileNetV2Config(image_size=64, depth_multiplier=0.35, num_labels=10)
    inputs = _image(64)
    return _Select(MobileNetV2ForImageClassification(cfg), list(inputs), "logits"), inputs


def _resnet():
    from transformers import ResNetConfig, ResNetForImageClassification

    cfg = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic", num_labels=10
    )
    inputs = _image(64)
    return _Select(ResNetForImageClassification(cfg), list(inputs), "logits"), inputs


def _convnext():
    from transformers import ConvNextConfig, ConvNextForImageClassification

    cfg = ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_labels=10)
    inputs = _image(64)
    return _Select(ConvNextForImageClassification(cfg), list(inputs), "logits"), inputs


def _efficientnet():
    from transformers import EfficientNetConfig, EfficientNetForImageClassification

    cfg = EfficientNetConfig(
        image_size=64, width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10
    )
    inputs = _image(64)
    return _Select(EfficientNetForImageClassification(cfg), list(inputs), "logits"), inputs


def _whisper_encoder():
    import torch
    from transformers import WhisperConfig, WhisperModel

    cfg = WhisperConfig(
        vocab_size=100, d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
        decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16,
        max_source_positions=32, max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=1,
    )  # fmt: skip
    encoder = WhisperModel(cfg).get_encoder()
    inputs = {"input_features": torch.randn(1, 16, 64, generator=torch.Generator().manual_seed(3))}
    return _Select(encoder, list(inputs), "last_hidden_state"), inputs


def _wav2vec2():
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    cfg = Wav2Vec2Config(
        vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    )  # fmt: skip
    inputs = {"input_values": torch.randn(1, 1600, generator=torch.Generator().manual_seed(4))}
    return _Select(Wav2Vec2Model(cfg), list(inputs), "last_hidden_state"), inputs


ZOO: dict[str, ZooCase] = {
    c.name: c
    for c in (
        ZooCase("bert", _bert),
        ZooCase("distilbert", _distilbert),
        ZooCase("vit", _vit),
        ZooCase("mobilevit", _mobilevit, slow=True),
        ZooCase("mobilenet_v2", _mobilenet_v2),
        ZooCase("resnet", _resnet),
        ZooCase("convnext", _convnext),
        ZooCase("efficientnet", _efficientnet, slow=True),
        ZooCase("whisper_encoder", _whisper_encoder),
        ZooCase("wav2vec2", _wav2vec2),
    )
}


def randomise(model, inputs: dict) -> None:  # noqa: ANN001
    """Give the random-init model non-degenerate activations, so the comparison is not vacuous.

    transformers initialises weights with std 0.02 and some heads with zeros, and BatchNorm running
    statistics start at mean 0 / var 1: deep CNNs then output ~0 everywhere (an all-zero output
    "matches" anything). Every Linear/Conv gets torch's default init, and BatchNorm statistics are
    estimated from a few random batches (train mode, cumulative average), so activations stay O(1).
    """
    import torch

    gen = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            module.reset_parameters()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        for bn in norms:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
            if bn.affine:
                with torch.no_grad():
                    bn.weight.uniform_(0.5, 1.5, generator=gen)
                    bn.bias.uniform_(-0.2, 0.2, generator=gen)
        model.train()
        with torch.no_grad():
            for _ in range(4):
                batch = [
                    torch.randn((4, *t.shape[1:]), generator=gen) if t.is_floating_point() else t.repeat(4, 1)
                    for t in inputs.values()
                ]
                model(*batch)
    model.eval()


def _parity(got: np.ndarray, want: np.ndarray) -> tuple[float, float, float, float]:
    """max abs error, that error over max |torch output|, cosine, SNR in dB (capped at 300)."""
    g = np.asarray(got, np.float64).reshape(-1)
    w = np.asarray(want, np.float64).reshape(-1)
    if g.shape != w.shape:
        raise ValueError(f"output shape {np.shape(got)} != torch {np.shape(want)}")
    err = float(np.max(np.abs(g - w)))
    denom = float(np.linalg.norm(g) * np.linalg.norm(w))
    cos = float(g @ w / denom) if denom > 0 else float(np.allclose(g, w))
    noise = float(np.sum((g - w) ** 2))
    snr = 300.0 if noise == 0 else min(300.0, 10 * np.log10(float(np.sum(w**2)) / noise))
    return err, err / max(float(np.max(np.abs(w))), 1e-12), cos, float(snr)


def run_case(case: ZooCase, workdir: Path, precisions: tuple[str, ...] = ("fp32", "fp16")) -> ZooResult:
    """Build, convert at each precision, interpret, compare with torch. Never raises for a model's failure."""
    import torch

    from mobex.converters.coreml import CoreMLMetadata, convert_coreml
    from mobex.runtime.mil import MilReferenceRunner

    start = time.perf_counter()
    result = ZooResult(case.name)
    torch.manual_seed(0)
    try:
        model, inputs = case.build()
        randomise(model, inputs)
        with torch.no_grad():
            want = model(*inputs.values()).float().numpy()
    except Exception as exc:  # noqa: BLE001 - a config this transformers version rejects is a row too
        result.errors["torch"] = f"build: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        result.seconds = round(time.perf_counter() - start, 2)
        return result
    result.params = sum(p.numel() for p in model.parameters())
    unsupported: set[str] = set()
    for precision in precisions:
        path = workdir / f"{case.name}-{precision}.mlpackage"
        try:
            variant = convert_coreml(
                model,
                inputs,
                path,
                precision=precision,
                output_names=["output"],
                metadata=CoreMLMetadata(name=case.name, version="0.0.0"),
            )
            result.converts[precision] = True
        except Exception as exc:  # noqa: BLE001 - a failure is a table row
            result.converts[precision] = False
            result.errors[precision] = f"convert: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            continue
        try:
            runner = MilReferenceRunner(variant.path)
            missing = runner.unsupported_ops()
            if missing:
                unsupported.update(missing)
                continue
            feed = {spec.name: inputs[spec.name].numpy() for spec in runner.inputs}
            got = runner.run(feed)[0]
            err, rel, cos, snr = _parity(got, want)
            result.max_abs_error[precision] = err
            result.rel_error[precision] = rel
            result.cosine[precision] = cos
            result.snr_db[precision] = snr
        except Exception as exc:  # noqa: BLE001
            result.errors[precision] = f"interpret: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    result.unsupported_ops = sorted(unsupported)
    result.seconds = round(time.perf_counter() - start, 2)
    return result


def _fmt(value: float | None, spec: str = ".2e") -> str:
    return "—" if value is None else format(value, spec)


def markdown_table(results: list[ZooResult]) -> str:
    lines = [
        "| model | params | converts (fp32/fp16) | fp32 max abs err (rel) | fp16 max abs err (rel) | fp16 cosine | "
        "fp16 SNR dB | unsupported ops / errors |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        conv = "/".join("yes" if r.converts.get(p) else "no" for p in ("fp32", "fp16"))
        notes = ", ".join(r.unsupported_ops) or "; ".join(f"{k}: {v}" for k, v in r.errors.items()) or "—"
        cells = []
        for p in ("fp32", "fp16"):
            rel = r.rel_error.get(p)
            cells.append(f"{_fmt(r.max_abs_error.get(p))}{f' ({rel:.1e})' if rel is not None else ''}")
        lines.append(
            f"| {r.model} | {r.params:,} | {conv} | {cells[0]} | {cells[1]} | {_fmt(r.cosine.get('fp16'), '.6f')} | "
            f"{_fmt(r.snr_db.get('fp16'), '.1f')} | {notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated model names (default: all): " + ", ".join(ZOO))
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--keep", type=Path, help="keep the converted packages in this folder")
    args = parser.parse_args(argv)

    import os

    os.environ.setdefault("TQDM_DISABLE", "1")  # coremltools' progress bars
    import torch

    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    names = args.only.split(",") if args.only else list(ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(ZOO)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="mobex-zoo-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            results.append(run_case(ZOO[name], workdir))
            if not args.json:
                r = results[-1]
                print(f"{name}: {'ok' if r.ok else 'problems'} ({r.seconds:.1f} s)", file=sys.stderr)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(markdown_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
