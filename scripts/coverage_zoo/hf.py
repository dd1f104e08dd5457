"""Random-init Hugging Face transformers models (small configs, no download), beyond the ten in
scripts/zoo.py: text, vision, audio and dense prediction. Judged on real text ids / real digits
(scikit-learn) and SYNTHETIC audio. Weights and BatchNorm statistics are made non-degenerate with
scripts/zoo.py's `randomise`."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from coverage_zoo import Input, ZooEntry, data, register

SEQ, VOCAB = 16, 100
TEXT = "real text: byte ids of scikit-learn's dataset descriptions (mod 100)"
DIGITS = "real: scikit-learn digits upscaled, 3 channels"


def _wrap(build: Callable[[], torch.nn.Module], names: list[str], output: str, inputs: dict) -> torch.nn.Module:
    """The built model (seeded first: what `randomise` leaves at transformers' random init, e.g. DINOv2's
    position embeddings or HuBERT's weight-norm positional conv, must be the same in every call), made
    non-degenerate, returning one tensor."""
    from zoo import _Select, randomise  # scripts/zoo.py: the first ten transformers models

    torch.manual_seed(0)
    model = build()
    torch.manual_seed(0)
    selected = _Select(model, names, output)
    randomise(selected, inputs)
    return selected.eval()


def _example(entry_inputs: tuple[Input, ...], dataset: Callable) -> dict:
    arrays = dataset("val", 1)
    return {i.name: torch.from_numpy(np.ascontiguousarray(arrays[i.name])) for i in entry_inputs}


def _text(name: str, build: Callable[[], torch.nn.Module], output: str = "last_hidden_state", mask: bool = True,
          needs: str = "", fast: bool = False) -> None:  # fmt: skip
    inputs = (Input("input_ids", (1, SEQ), "int64"),) + ((Input("attention_mask", (1, SEQ), "int64"),) if mask else ())

    def dataset(split: str, n: int) -> dict:
        return data.text_ids(split, n, SEQ, VOCAB, with_mask=mask)

    def factory() -> torch.nn.Module:
        return _wrap(build, [i.name for i in inputs], output, _example(inputs, dataset))

    register(ZooEntry(name=f"hf_{name}", family="transformers", factory=factory, inputs=inputs, data=dataset,
                      samples=8, data_note=TEXT, covers=(f"transformers {name}", "int64 ids"),
                      needs="; ".join(x for x in ("int64 ids -> int32 on Android: manifest + id range (part 6)", needs)
                                      if x), fast=fast))  # fmt: skip


def _vision(name: str, build: Callable[[], torch.nn.Module], size: int, output: str = "logits",
            needs: str = "") -> None:  # fmt: skip
    inputs = (Input("pixel_values", (1, 3, size, size)),)

    def dataset(split: str, n: int) -> dict:
        arrays = data.digits(split, n, size=size, channels=3, name="pixel_values")
        arrays["pixel_values"] = (arrays["pixel_values"] - 0.5) / 0.5
        return arrays

    def factory() -> torch.nn.Module:
        return _wrap(build, ["pixel_values"], output, _example(inputs, dataset))

    register(ZooEntry(name=f"hf_{name}", family="transformers", factory=factory, inputs=inputs, data=dataset,
                      samples=6, data_note=DIGITS, covers=(f"transformers {name}",),
                      needs=needs or "classification without labels: top-1 agreement"))  # fmt: skip


def _audio(name: str, build: Callable[[], torch.nn.Module], input_name: str, shape: tuple[int, ...],
           output: str = "last_hidden_state") -> None:  # fmt: skip
    inputs = (Input(input_name, (1, *shape)),)

    def dataset(split: str, n: int) -> dict:
        if len(shape) == 1:
            return data.audio(split, n, shape[0], name=input_name)
        return data.features(split, n, shape, input_name)

    def factory() -> torch.nn.Module:
        return _wrap(build, [input_name], output, _example(inputs, dataset))

    register(ZooEntry(name=f"hf_{name}", family="transformers", factory=factory, inputs=inputs, data=dataset,
                      samples=4, data_note="SYNTHETIC audio / features", covers=(f"transformers {name}",),
                      needs="embedding of a sequence: per-sample cosine (part 4)"))  # fmt: skip


T = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
         max_position_embeddings=64)  # fmt: skip


def _cfg(cls: str, **kw: object) -> object:
    import transformers

    return getattr(transformers, cls)(**kw)


def _model(cls: str, config: object) -> torch.nn.Module:
    import transformers

    return getattr(transformers, cls)(config)


# --- text -----------------------------------------------------------------------------------------
_text("roberta", lambda: _model("RobertaModel", _cfg("RobertaConfig", **T, pad_token_id=1)))
_text("albert", lambda: _model("AlbertModel", _cfg("AlbertConfig", **T, embedding_size=16)))
_text("electra", lambda: _model("ElectraModel", _cfg("ElectraConfig", **T, embedding_size=16)))
_text("mobilebert", lambda: _model("MobileBertModel", _cfg(
    "MobileBertConfig", **{**T, "hidden_size": 64}, embedding_size=32, intra_bottleneck_size=32,
    true_hidden_size=32, num_feedforward_networks=2)))  # fmt: skip
_text("deberta_v2", lambda: _model("DebertaV2Model", _cfg("DebertaV2Config", **T, relative_attention=True,
                                                          position_buckets=8, max_relative_positions=16)))  # fmt: skip
_text("gpt2", lambda: _model("GPT2Model", _cfg("GPT2Config", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2,
                                               n_positions=64)))  # fmt: skip
_text("t5_encoder", lambda: _model("T5EncoderModel", _cfg("T5Config", vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64,
                                                          num_layers=2, num_heads=2)))  # fmt: skip
_text("bart_encoder", lambda: _model("BartModel", _cfg(
    "BartConfig", vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
    decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64),
).get_encoder())  # fmt: skip
_text("llama_causal_lm", lambda: _model("LlamaForCausalLM", _cfg(
    "LlamaConfig", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=64, use_cache=False)), output="logits",
    needs="causal LM logits: next-token agreement would be the task metric")  # fmt: skip
_text("qwen2_causal_lm", lambda: _model("Qwen2ForCausalLM", _cfg(
    "Qwen2Config", vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
    num_key_value_heads=1, max_position_embeddings=64, use_cache=False)), output="logits",
    needs="causal LM logits: next-token agreement would be the task metric")  # fmt: skip

# --- vision ---------------------------------------------------------------------------------------
V = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, num_labels=10)
_vision("deit", lambda: _model("DeiTForImageClassification", _cfg("DeiTConfig", **V, image_size=32, patch_size=8)), 32)
V_BACKBONE = {k: v for k, v in V.items() if k != "num_labels"}
_vision("dinov2", lambda: _model("Dinov2Model", _cfg("Dinov2Config", **V_BACKBONE, image_size=32, patch_size=8)), 32,
        output="pooler_output", needs="embedding task: per-sample cosine / recall@k (part 4)")  # fmt: skip
_vision("beit", lambda: _model("BeitForImageClassification", _cfg("BeitConfig", **V, image_size=32, patch_size=8,
                                                                  use_relative_position_bias=True)), 32)  # fmt: skip
_vision("swin", lambda: _model("SwinForImageClassification", _cfg(
    "SwinConfig", image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4,
    num_labels=10)), 32)  # fmt: skip
_vision("levit", lambda: _model("LevitForImageClassification", _cfg(
    "LevitConfig", image_size=64, hidden_sizes=[32, 48, 64], num_attention_heads=[2, 2, 2], depths=[1, 1, 1],
    key_dim=[8, 8, 8], num_labels=10)), 64)  # fmt: skip
_vision("poolformer", lambda: _model("PoolFormerForImageClassification", _cfg(
    "PoolFormerConfig", hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_labels=10)), 64)  # fmt: skip
_vision("regnet", lambda: _model("RegNetForImageClassification", _cfg(
    "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], groups_width=8,
    num_labels=10)), 64)  # fmt: skip
_vision("mobilevitv2", lambda: _model("MobileViTV2ForImageClassification", _cfg(
    "MobileViTV2Config", image_size=64, width_multiplier=0.25, num_labels=10)), 64)  # fmt: skip
_vision("convnextv2", lambda: _model("ConvNextV2ForImageClassification", _cfg(
    "ConvNextV2Config", hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_labels=10)), 64)  # fmt: skip

# --- dense prediction -----------------------------------------------------------------------------
_vision("segformer", lambda: _model("SegformerForSemanticSegmentation", _cfg(
    "SegformerConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
    num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32, num_labels=4, patch_sizes=[7, 3],
    strides=[4, 2])), 64, needs="task = segmentation: pixel agreement, mIoU (part 4)")  # fmt: skip
_vision("dpt_depth", lambda: _model("DPTForDepthEstimation", _cfg(
    "DPTConfig", image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
    intermediate_size=64, backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 32], fusion_hidden_size=16,
    head_in_index=-1)), 32, output="predicted_depth", needs="dense regression (depth): tensor parity")  # fmt: skip
_vision("glpn_depth", lambda: _model("GLPNForDepthEstimation", _cfg(
    "GLPNConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
    num_attention_heads=[1, 2], mlp_ratios=[2, 2], patch_sizes=[7, 3], strides=[4, 2], decoder_hidden_size=16)), 64,
    output="predicted_depth", needs="dense regression (depth): tensor parity")  # fmt: skip

# --- audio ----------------------------------------------------------------------------------------
_audio("hubert", lambda: _model("HubertModel", _cfg(
    "HubertConfig", vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3), num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2)), "input_values", (1600,))  # fmt: skip
_audio("ast", lambda: _model("ASTForAudioClassification", _cfg(
    "ASTConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=8,
    max_length=32, num_mel_bins=32, frequency_stride=8, time_stride=8, num_labels=5)), "input_values", (32, 32),
    output="logits")  # fmt: skip
