"""Pruning before conversion: magnitude and structured (torch-pruning), fine-tuning, counts, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from mobex.data import example_inputs, load_dataset, load_validation_and_calibration
from mobex.errors import ConversionError, DataError, RecipeError, UsageError
from mobex.prune.macs import count_model
from mobex.prune.pruning import load_finetune_data, load_pruned_model, prune_model, save_pruned_model
from mobex.recipe import FinetuneSection, PruneSection, load_recipe
from mobex.sources import load_model
from tests.conftest import SAMPLES


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Sample:
    """A sample's recipe, data and trained model, loaded once per test module."""

    def __init__(self, name: str) -> None:
        self.recipe = load_recipe(SAMPLES / name / "recipe.toml")
        self.validation, _ = load_validation_and_calibration(self.recipe)
        self.training = load_dataset(self.recipe, "training", self.recipe.data.training)
        self.model = load_model(self.recipe)
        self.inputs = example_inputs(self.recipe, self.validation)

    def prune(self, finetune: FinetuneSection | None = None, training=None, **settings):  # noqa: ANN001, ANN201
        recipe = self.recipe.model_copy(update={"prune": PruneSection(**settings, finetune=finetune)})
        train = training if training is not None else (self.training if finetune else None)
        return prune_model(self.model, recipe, self.inputs, train, self.validation)


@pytest.fixture(scope="module")
def cnn() -> Sample:
    return Sample("digits_cnn")


@pytest.fixture(scope="module")
def mlp() -> Sample:
    return Sample("tabular_mlp")


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


# ------------------------------------------------------------------------------------------------ counting


def test_count_model_by_hand() -> None:
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(256, 10))
    with torch.no_grad():
        model[0].weight[:2] = 0  # half the filters zero
    count = count_model(model, (torch.rand(1, 1, 8, 8),))
    assert count.layers["0"].macs == 8 * 8 * 4 * 9
    assert count.layers["0"].nonzero_macs == 8 * 8 * 2 * 9
    assert count.layers["2"].macs == 256 * 10
    assert count.macs == 8 * 8 * 4 * 9 + 256 * 10
    assert count.nonzero_macs == 8 * 8 * 2 * 9 + 256 * 10
    assert count.params == 36 + 2570
    assert count.nonzero_params == 18 + int(torch.count_nonzero(model[2].weight)) + int(
        torch.count_nonzero(model[2].bias)
    )


def test_attention_matmuls_count_towards_total() -> None:
    vit = Sample("digits_vit")
    count = count_model(vit.model, tuple(vit.inputs.values()))
    assert count.macs > sum(layer.macs for layer in count.layers.values())  # q@k^T and attn@v


# ------------------------------------------------------------------------------------------------ magnitude


def test_magnitude_global_reaches_the_target_and_bakes_zeros(cnn: Sample) -> None:
    before = {n: w.clone() for n, w in _weights(cnn.model).items()}
    result = cnn.prune(method="magnitude", sparsity=0.6)
    assert result.achieved_sparsity == pytest.approx(0.6, abs=1e-3)
    pruned = result.model
    assert not any(hasattr(m, "weight_mask") or hasattr(m, "weight_orig") for m in pruned.modules())
    assert not any(m._forward_pre_hooks for m in pruned.modules())  # plain weights for the converters
    assert result.after.params == result.before.params  # unstructured: same shapes, more zeros
    assert result.after.nonzero_macs < 0.7 * result.before.macs
    per_layer = {layer.name: layer.sparsity for layer in result.layers}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.2  # one global threshold, uneven layers
    for name, w in _weights(cnn.model).items():  # the caller's model is untouched
        torch.testing.assert_close(w, before[name])
    # one threshold over all layers: every kept weight is at least as large as every removed one
    kept = torch.cat([before[n].abs()[w != 0] for n, w in _weights(pruned).items()])
    removed = torch.cat([before[n].abs()[w == 0] for n, w in _weights(pruned).items()])
    assert kept.min() >= removed.max()
    for name, w in _weights(pruned).items():  # kept weights keep their trained values
        torch.testing.assert_close(w[w != 0], before[name][w != 0])


def test_magnitude_per_layer_overrides_and_ignore(cnn: Sample) -> None:
    result = cnn.prune(
        method="magnitude",
        sparsity=0.5,
        scope="per-layer",
        layers={"blocks.2.pointwise.0": 0.9},
        ignore=["classifier", "blocks.0"],
    )
    by_name = {layer.name: layer for layer in result.layers}
    assert by_name["blocks.2.pointwise.0"].sparsity == pytest.approx(0.9, abs=1e-3)
    assert by_name["blocks.1.pointwise.0"].sparsity == pytest.approx(0.5, abs=1e-3)
    assert by_name["stem.0"].sparsity == pytest.approx(0.5, abs=0.01)
    for name in ("classifier", "blocks.0.depthwise.0", "blocks.0.pointwise.0"):
        assert not by_name[name].pruned
        assert by_name[name].sparsity < 0.05  # trained weights are (almost) never exactly zero


# ------------------------------------------------------------------------------------------------ structured


def test_structured_removes_channels_and_keeps_the_classes(cnn: Sample, tmp_path: Path) -> None:
    result = cnn.prune(method="structured", sparsity=0.5, scope="per-layer")
    model = result.model
    assert result.after.macs <= 0.55 * result.before.macs
    assert result.after.params < 0.5 * result.before.params
    assert model.classifier.out_features == 10
    original = cnn.model.blocks
    for block, before in zip(model.blocks, original, strict=True):
        # depthwise convs stay depthwise, lose channels, and stay coupled with their BatchNorm and the next layer
        dw = block.depthwise[0]
        assert dw.groups == dw.in_channels == dw.out_channels == dw.weight.shape[0] < before.depthwise[0].out_channels
        assert block.depthwise[1].num_features == dw.out_channels == block.pointwise[0].in_channels
    assert model.stem[0].out_channels == 16  # 32 * (1 - 0.5)
    assert model.head[0].out_channels == 640  # 1280 * (1 - 0.5)
    out = model(*cnn.inputs.values())
    assert out.shape == (1, 10)
    assert result.to_dict()["macs_ratio"] <= 0.55
    assert "classifier" in result.notes[0]

    # the hand-off to the export workers: an ExportedProgram both converters accept (.eval() works)
    path = save_pruned_model(model, cnn.inputs, tmp_path / "pruned.pt2")
    loaded = load_pruned_model(path)
    loaded.eval()
    torch.testing.assert_close(loaded(*cnn.inputs.values()), out)


def test_structured_layer_override_and_ignore(cnn: Sample) -> None:
    result = cnn.prune(
        method="structured", sparsity=0.5, scope="per-layer", layers={"blocks.2.pointwise.0": 0.75}, ignore=["stem"]
    )
    model = result.model
    assert model.blocks[2].pointwise[0].out_channels == 64  # 256 * (1 - 0.75)
    assert model.blocks[1].pointwise[0].out_channels == 64  # 128 * (1 - 0.5)
    assert model.stem[0].out_channels == 32  # ignored: its group (stem + first depthwise) keeps every channel
    assert model.blocks[0].depthwise[0].out_channels == 32


def test_structured_global_scope_differs_per_layer(cnn: Sample) -> None:
    result = cnn.prune(method="structured", sparsity=0.5, scope="global")
    channels = [layer.weight_shape_after[0] / layer.weight_shape_before[0] for layer in result.layers[:-1]]
    assert len(set(np.round(channels, 3))) > 1  # one ranking over all groups: layers lose different fractions
    assert result.after.macs < 0.6 * result.before.macs


def test_structured_vit_prunes_mlp_and_leaves_attention_heads_alone() -> None:
    vit = Sample("digits_vit")
    result = vit.prune(method="structured", sparsity=0.5, scope="per-layer")
    model = result.model
    left = result.to_dict()["left_alone"]
    assert left and all("attn" in entry["layer"] and "forward pass" in entry["reason"] for entry in left)
    for block in model.blocks:
        assert block.mlp[0].out_features == 48  # hidden 96 -> 48
        assert block.attn.q.out_features == 48 and block.attn.v.out_features == 48  # heads x head_dim kept
    assert model.head.out_features == 10
    assert model(*vit.inputs.values()).shape == (1, 10)
    assert result.after.macs < 0.6 * result.before.macs


# ------------------------------------------------------------------------------------------------ fine-tuning


def test_finetune_recovers_accuracy_and_is_deterministic(cnn: Sample) -> None:
    ft = FinetuneSection(epochs=3, learning_rate=3e-3)
    first = cnn.prune(method="structured", sparsity=0.3, scope="per-layer", finetune=ft)
    assert first.metric == "accuracy" and first.original == pytest.approx(0.989, abs=1e-3)
    assert len(first.history) == 3 and all(np.isfinite(h.loss) for h in first.history)
    assert first.history[-1].loss < first.history[0].loss
    assert first.finetuned > first.pruned + 0.2
    assert first.to_dict()["finetune"]["loss"] == "cross-entropy"
    second = cnn.prune(method="structured", sparsity=0.3, scope="per-layer", finetune=ft)
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_finetune_after_magnitude_keeps_the_zeros(cnn: Sample) -> None:
    result = cnn.prune(method="magnitude", sparsity=0.8, finetune=FinetuneSection(epochs=2, learning_rate=3e-3))
    assert result.achieved_sparsity == pytest.approx(0.8, abs=1e-3)
    assert result.finetuned > result.pruned


def test_finetune_without_labels_distills_from_the_original(mlp: Sample) -> None:
    unlabeled = load_dataset(mlp.recipe, "training", mlp.recipe.data.training)
    unlabeled.labels = None
    result = mlp.prune(
        method="structured",
        sparsity=0.5,
        scope="per-layer",
        finetune=FinetuneSection(epochs=5, batch_size=16),
        training=unlabeled,
    )
    assert result.to_dict()["finetune"]["loss"].startswith("distillation")
    assert result.history[-1].loss < result.history[0].loss
    assert result.model.net[0].out_features == 16


# ------------------------------------------------------------------------------------------------ bad input


def _write_recipe(folder: Path, extra: str) -> Path:
    recipe = folder / "recipe.toml"
    recipe.write_text(recipe.read_text() + "\n" + extra)
    return recipe


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2"])
def test_sparsity_outside_zero_one_is_a_recipe_error(sample_copy, value: str) -> None:
    recipe = _write_recipe(sample_copy("digits_cnn"), f'[prune]\nmethod = "magnitude"\nsparsity = {value}\n')
    with pytest.raises(RecipeError, match=r"\[prune\]\.sparsity: sparsity must be strictly between 0 and 1") as err:
        load_recipe(recipe)
    assert err.value.exit_code == 2


def test_layer_sparsity_outside_zero_one_is_a_recipe_error(sample_copy) -> None:
    text = '[prune]\nmethod = "magnitude"\nsparsity = 0.5\n[prune.layers]\n"stem.0" = 1.0\n'
    with pytest.raises(RecipeError, match=r"sparsity of layer 'stem.0' must be strictly between 0 and 1"):
        load_recipe(_write_recipe(sample_copy("digits_cnn"), text))


def test_finetune_without_training_data_is_a_recipe_error(sample_copy) -> None:
    folder = sample_copy("digits_cnn")
    recipe = folder / "recipe.toml"
    recipe.write_text(recipe.read_text().replace('training = "data/train.npz"\n', ""))
    text = '[prune]\nmethod = "structured"\nsparsity = 0.5\n[prune.finetune]\nepochs = 1\n'
    with pytest.raises(RecipeError, match=r"\[prune.finetune\]: fine-tuning needs training data"):
        load_recipe(_write_recipe(folder, text))


def test_missing_finetune_data_file_is_a_recipe_error(sample_copy) -> None:
    text = '[prune]\nmethod = "structured"\nsparsity = 0.5\n[prune.finetune]\ndata = "data/nope.npz"\n'
    with pytest.raises(RecipeError, match=r"\[prune.finetune\].data: file not found"):
        load_recipe(_write_recipe(sample_copy("digits_cnn"), text))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["image"].__setitem__((3, 0, 1, 1), np.nan), r"array 'image' contains 1 NaN values"),
        (lambda d: d.__setitem__("image", d["image"][:, :, :4, :]), r"array 'image' has shape \[1437, 1, 4, 8\]"),
    ],
)
def test_bad_training_data_is_refused(sample_copy, change, message: str) -> None:  # noqa: ANN001
    folder = sample_copy("digits_cnn")
    with np.load(folder / "data" / "train.npz") as npz:
        data = {k: npz[k] for k in npz.files}
    change(data)
    np.savez(folder / "data" / "train.npz", **data)
    text = '[prune]\nmethod = "structured"\nsparsity = 0.5\n[prune.finetune]\nepochs = 1\n'
    recipe = load_recipe(_write_recipe(folder, text))
    with pytest.raises(DataError, match=r"\[data\]\.training \(train.npz\): " + message):
        load_finetune_data(recipe)


def test_unknown_layer_names_are_named_with_valid_ones(cnn: Sample) -> None:
    with pytest.raises(UsageError, match=r"\[prune\]\.layers: the model has no layer named 'blocks.4'") as err:
        cnn.prune(method="magnitude", sparsity=0.5, layers={"blocks.4": 0.5})
    assert "stem.0" in str(err.value) and "classifier" in str(err.value)
    with pytest.raises(UsageError, match=r"did you mean 'classifier'"):
        cnn.prune(method="structured", sparsity=0.5, ignore=["clasifier"])
    with pytest.raises(UsageError, match=r"'blocks.0.depthwise.1' holds no Conv/Linear weight"):
        cnn.prune(method="magnitude", sparsity=0.5, ignore=["blocks.0.depthwise.1"])


def test_requesting_an_unprunable_layer_names_it() -> None:
    vit = Sample("digits_vit")
    with pytest.raises(UsageError, match=r"layer 'blocks.0.attn.v' cannot be pruned structurally.*unflatten"):
        vit.prune(method="structured", sparsity=0.5, layers={"blocks.0.attn.v": 0.5})


def test_nothing_left_to_prune_is_a_conversion_error(mlp: Sample) -> None:
    with pytest.raises(ConversionError, match="found no channel it can remove"):
        mlp.prune(method="structured", sparsity=0.5, ignore=["net.0", "net.2"])


def test_compiled_sources_cannot_be_pruned(tmp_path: Path, cnn: Sample) -> None:
    recipe = cnn.recipe.model_copy(
        update={
            "model": cnn.recipe.model.model_copy(update={"source": "model.pt2"}),
            "prune": PruneSection(method="magnitude", sparsity=0.5),
        }
    )
    with pytest.raises(UsageError, match="a compiled graph that pruning cannot edit"):
        prune_model(cnn.model, recipe, cnn.inputs)


def test_layers_both_overridden_and_ignored_is_a_recipe_error(sample_copy) -> None:
    text = '[prune]\nmethod = "magnitude"\nsparsity = 0.5\nignore = ["stem.0"]\n[prune.layers]\n"stem.0" = 0.3\n'
    with pytest.raises(RecipeError, match=r"stem.0 are both in `layers` and in `ignore`"):
        load_recipe(_write_recipe(sample_copy("digits_cnn"), text))


def test_pruning_gate_fails_a_model_that_lost_too_much(cnn: Sample) -> None:
    broken = cnn.prune(method="magnitude", sparsity=0.8)  # no fine-tuning: accuracy collapses
    gate = broken.gate()
    assert gate is not None and not gate["passed"]
    assert gate["value"] == pytest.approx(broken.original - broken.pruned)
    assert "[prune].max_accuracy_drop" in gate["message"]
    mild = cnn.prune(method="magnitude", sparsity=0.2, max_accuracy_drop=0.05)
    assert mild.gate()["passed"] and mild.to_dict()["gate"]["limit"] == 0.05


def test_without_labels_a_classifier_is_judged_by_top1_agreement_with_the_original(cnn: Sample) -> None:
    """No labels (EfficientNet-Lite0's pictures have none): the share of top-1 answers pruning changed is what
    the gate limits, an upper bound of the accuracy lost."""
    import copy

    unlabeled = copy.copy(cnn.validation)
    unlabeled.labels = None
    recipe = cnn.recipe.model_copy(update={"prune": PruneSection(method="magnitude", sparsity=0.8)})
    broken = prune_model(cnn.model, recipe, cnn.inputs, None, unlabeled)
    labelled = cnn.prune(method="magnitude", sparsity=0.8)
    assert broken.metric == "top1_agreement" and broken.original == 1.0
    agreement = np.mean(
        _predict(broken.model, cnn.validation).argmax(1) == _predict(cnn.model, cnn.validation).argmax(1)
    )
    assert broken.pruned == pytest.approx(agreement)
    assert broken.pruned < 0.9 and 1.0 - broken.pruned >= labelled.original - labelled.pruned - 1e-9
    gate = broken.gate()
    assert gate is not None and not gate["passed"] and gate["metric"] == "top1_disagreement_vs_original"
    assert "no labels" in gate["message"]


def _predict(model: nn.Module, data) -> np.ndarray:  # noqa: ANN001 - Dataset
    from mobex.prune.finetune import predict

    return predict(model, data, [spec.name for spec in load_recipe(SAMPLES / "digits_cnn" / "recipe.toml").inputs])
