"""Pruning before conversion, for both targets: the `[prune]` table of the recipe.

Two methods:
- `magnitude`: unstructured L1 pruning of Conv/Linear weights with `torch.nn.utils.prune`, over all
  of them at once (`scope = "global"`: one threshold, layers with small weights lose more) or layer by
  layer (`scope = "per-layer"`: every layer loses the same fraction); `[prune].layers` sets a layer's
  own fraction. The zeros are baked in (`prune.remove`), so converters see plain weights; the dense
  MAC count does not move, the report shows the MACs a sparse kernel could skip (`nonzero_macs`).
- `structured`: channel pruning with torch-pruning's DepGraph (MetaPruner + group L2 magnitude), which
  removes channels together with everything coupled to them (BatchNorm, the next layer's inputs,
  depthwise convolutions, residual adds), so the model really gets smaller and faster. The layers that
  produce the model's outputs are never pruned (the class count must not change), nor the `ignore`d ones.
  A channel group whose removal breaks the forward pass — for instance the q/k/v projections of an
  attention written with a fixed head count — is found by running the model after each group, and is
  left alone (listed in the report with the reason); everything else is pruned.

Optional recovery fine-tuning (`[prune.finetune]`) runs after pruning, with the masks of magnitude
pruning still attached so pruned weights stay zero. The pipeline calls `prune_model` once, in the parent
process, and hands the result to the export workers as an ExportedProgram (`save_pruned_model`,
`load_pruned_model`).
"""

from __future__ import annotations

import copy
import difflib
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mobex.errors import ConversionError, UsageError
from mobex.prune.finetune import EpochStats, finetune, predict, score, task_metric
from mobex.prune.macs import ModelCount, count_model, weight_layer_types

if TYPE_CHECKING:
    import torch

    from mobex.data import Dataset
    from mobex.recipe import PruneSection, Recipe

MAX_CHANNEL_FRACTION = 0.9  # global structured pruning never removes more than this of one layer's channels


@dataclass
class LayerPruning:
    """What pruning did to one Conv/Linear layer."""

    name: str
    kind: str
    weight_shape_before: list[int]
    weight_shape_after: list[int]
    sparsity: float  # 1 - nonzero weights after / weights before: removed and zeroed weights alike
    macs_before: int
    macs_after: int
    pruned: bool  # False: ignored, protected (an output layer) or left alone

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PruneResult:
    """The pruned model and the numbers the report shows about it."""

    model: torch.nn.Module
    method: str
    scope: str
    target_sparsity: float
    before: ModelCount
    after: ModelCount
    layers: list[LayerPruning]
    metric: str  # accuracy | mae | top1_agreement (unlabelled classifier) | cosine_to_original
    original: float | None
    pruned: float | None
    finetuned: float | None
    history: list[EpochStats] = field(default_factory=list)
    left_alone: dict[str, str] = field(default_factory=dict)  # layer -> why its channels were kept
    notes: list[str] = field(default_factory=list)
    finetune_settings: dict | None = None
    max_accuracy_drop: float | None = None
    seconds: float = 0.0

    @property
    def final(self) -> float | None:
        """The task metric of the model that is exported: fine-tuned if it was, else just pruned."""
        return self.finetuned if self.finetuned is not None else self.pruned

    def gate(self) -> dict | None:
        """The pruning gate (accuracy drop of the pruned float model against the original), when it applies.

        Without labels a classifier's drop is 1 - its top-1 agreement with the original (an upper bound of
        the accuracy it can have lost)."""
        gated = self.metric in ("accuracy", "top1_agreement") and self.max_accuracy_drop is not None
        if not gated or self.original is None or self.final is None:
            return None
        drop = self.original - self.final  # the original agrees with itself: 1.0
        passed = drop <= self.max_accuracy_drop
        verdict = "ok" if passed else "FAILED"
        what = "accuracy drop" if self.metric == "accuracy" else "share of top-1 answers changed (no labels)"
        return {
            "metric": "accuracy_drop_vs_original" if self.metric == "accuracy" else "top1_disagreement_vs_original",
            "value": drop,
            "limit": self.max_accuracy_drop,
            "passed": passed,
            "message": f"pruning: {what} of the pruned model vs the original = {drop:.4g} "
            f"(must be <= {self.max_accuracy_drop:.4g}, [prune].max_accuracy_drop): {verdict}",
        }

    @property
    def achieved_sparsity(self) -> float:
        """Over the layers that were pruned: the fraction of their weights removed or zeroed."""
        pruned = [layer for layer in self.layers if layer.pruned]
        before = sum(int(np.prod(layer.weight_shape_before)) for layer in pruned)
        after = sum(
            self.after.layers[layer.name].nonzero_weights for layer in pruned if layer.name in self.after.layers
        )
        return 1.0 - after / before if before else 0.0

    def to_dict(self) -> dict:
        final = self.final
        drop = None
        if self.original is not None and final is not None:
            drop = final - self.original if self.metric == "mae" else self.original - final
        return {
            "method": self.method,
            "scope": self.scope,
            "target_sparsity": self.target_sparsity,
            "achieved_sparsity": round(self.achieved_sparsity, 6),
            "params_before": self.before.params,
            "params_after": self.after.params,
            "nonzero_params_before": self.before.nonzero_params,
            "nonzero_params_after": self.after.nonzero_params,
            "macs_before": self.before.macs,
            "macs_after": self.after.macs,
            "nonzero_macs_after": self.after.nonzero_macs,
            "params_ratio": _ratio(self.after.params, self.before.params),
            "macs_ratio": _ratio(self.after.macs, self.before.macs),
            "nonzero_macs_ratio": _ratio(self.after.nonzero_macs, self.before.nonzero_macs),
            "quality": {
                "metric": self.metric,
                "original": self.original,
                "after_pruning": self.pruned,
                "after_finetune": self.finetuned,
                "drop": drop,  # original minus final (for mae: final minus original); > 0 is worse
            },
            "finetune": None
            if self.finetune_settings is None
            else {**self.finetune_settings, "history": [h.to_dict() for h in self.history]},
            "layers": [layer.to_dict() for layer in self.layers],
            "gate": self.gate(),
            "left_alone": [{"layer": k, "reason": v} for k, v in self.left_alone.items()],
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
        }


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 6) if b else None


def load_finetune_data(recipe: Recipe) -> Dataset | None:
    """The training data for `[prune.finetune]`, checked like every data file (shape, dtype, NaN/inf)."""
    if recipe.prune is None or recipe.prune.finetune is None:
        return None
    from mobex.data import load_dataset

    path = recipe.prune.finetune.data or recipe.data.training
    if path is None:  # load_recipe refuses this already; kept for recipes built in Python
        raise UsageError(
            "[prune.finetune]: fine-tuning needs training data; set [prune.finetune].data or [data].training"
        )
    return load_dataset(recipe, "training", path)


def prune_model(
    model: torch.nn.Module,
    recipe: Recipe,
    example_inputs: dict[str, torch.Tensor],
    training: Dataset | None = None,
    validation: Dataset | None = None,
) -> PruneResult:
    """Prune (and fine-tune) a copy of `model` as `recipe.prune` says; `model` itself is not changed.

    `example_inputs` are the recipe's inputs in call order (one batch of real data traces best).
    `validation` gives the task metric of the original, pruned and fine-tuned model; `training` is
    required when the recipe asks for fine-tuning. Raises UsageError for bad settings (unknown layer
    names, fine-tuning without data, a source that is not a Python module) and ConversionError when
    torch-pruning cannot handle the model.
    """
    import torch

    settings = recipe.prune
    if settings is None:
        raise UsageError("the recipe has no [prune] table")
    if recipe.model.source.endswith((".pt", ".pt2")):
        raise UsageError(
            f"[prune]: the model comes from {recipe.model.source!r}, a compiled graph that pruning cannot edit",
            "point [model].source at a 'module:function' factory (with [model].weights) to prune the model",
        )
    if settings.finetune is not None and training is None:
        raise UsageError(
            "[prune.finetune]: fine-tuning needs training data, and none was given",
            "set [data].training or [prune.finetune].data",
        )
    threads = torch.get_num_threads()
    torch.set_num_threads(settings.finetune.threads if settings.finetune else 1)
    try:
        return _prune_model(model, recipe, settings, example_inputs, training, validation)
    finally:
        torch.set_num_threads(threads)


def _prune_model(
    model: torch.nn.Module,
    recipe: Recipe,
    settings: PruneSection,
    example_inputs: dict[str, torch.Tensor],
    training: Dataset | None,
    validation: Dataset | None,
) -> PruneResult:
    import torch

    start = time.perf_counter()
    args = tuple(example_inputs.values())
    names = [spec.name for spec in recipe.inputs]
    model = copy.deepcopy(model).train(False)
    _check_layer_names(settings, model)
    before = count_model(model, args)
    with torch.no_grad():
        reference_shapes = [tuple(t.shape) for t in _flat(model(*args))]

    has_labels = validation is not None and validation.labels is not None
    metric = task_metric(recipe.model.task, has_labels)
    original_val = predict(model, validation, names) if validation is not None else None
    original = score(metric, original_val, validation, original_val) if validation is not None else None
    needs_teacher = settings.finetune is not None and not (
        training is not None and training.labels is not None and recipe.model.task in ("classification", "regression")
    )
    teacher = copy.deepcopy(model) if needs_teacher else None

    notes: list[str] = []
    left_alone: dict[str, str] = {}
    if settings.method == "magnitude":
        pruned_names = _magnitude(model, settings)
    else:
        model, pruned_names, left_alone, notes = _structured(model, settings, args, reference_shapes)

    pruned_score = score(metric, predict(model, validation, names), validation, original_val) if validation else None
    history: list[EpochStats] = []
    finetuned = None
    finetune_settings = None
    if settings.finetune is not None and training is not None:
        ft = settings.finetune
        history = finetune(
            model,
            ft,
            training,
            task=recipe.model.task,
            names=names,
            validation=validation,
            teacher=teacher,
            original_validation=original_val,
            seed=ft.seed,
        )
        finetuned = history[-1].validation if history else None
        finetune_settings = {
            "epochs": ft.epochs,
            "learning_rate": ft.learning_rate,
            "batch_size": ft.batch_size,
            "weight_decay": ft.weight_decay,
            "seed": ft.seed,
            "data": str(training.path),
            "samples": training.num_samples,
            "loss": "distillation (MSE to the original model's outputs)"
            if teacher is not None
            else ("cross-entropy" if recipe.model.task == "classification" else "mse"),
        }
    if settings.method == "magnitude":
        _bake_masks(model)
    model.train(False)
    for p in model.parameters():
        p.requires_grad_(False)
    after = count_model(model, args)
    layers = [
        LayerPruning(
            name=name,
            kind=layer.kind,
            weight_shape_before=list(layer.weight_shape),
            weight_shape_after=list(after.layers[name].weight_shape) if name in after.layers else [],
            sparsity=round(1.0 - after.layers[name].nonzero_weights / layer.weights, 6)
            if name in after.layers
            else 1.0,
            macs_before=layer.macs,
            macs_after=after.layers[name].macs if name in after.layers else 0,
            pruned=name in pruned_names,
        )
        for name, layer in before.layers.items()
    ]
    return PruneResult(
        model=model,
        method=settings.method,
        scope=settings.scope,
        target_sparsity=settings.sparsity,
        before=before,
        after=after,
        layers=layers,
        metric=metric,
        original=original,
        pruned=pruned_score,
        finetuned=finetuned,
        history=history,
        left_alone=left_alone,
        notes=notes,
        finetune_settings=finetune_settings,
        max_accuracy_drop=settings.max_accuracy_drop,
        seconds=time.perf_counter() - start,
    )


def _flat(out: object) -> list[torch.Tensor]:
    from mobex.runtime.torch_model import flatten_outputs

    return flatten_outputs(out)


def _weight_layers(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    import torch

    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, weight_layer_types()) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }


def _under(name: str, prefix: str) -> bool:
    """`name` is the module `prefix` or inside it (so `ignore = ["blocks.0"]` covers a whole block)."""
    return name == prefix or name.startswith(prefix + ".")


def _check_layer_names(settings: PruneSection, model: torch.nn.Module) -> None:
    """Every name in `layers` and `ignore` must be a module of the model that holds a Conv/Linear."""
    modules = [name for name, _ in model.named_modules() if name]
    weight_names = list(_weight_layers(model))
    for field_name, given in (("layers", list(settings.layers)), ("ignore", settings.ignore)):
        for name in given:
            if name not in modules:
                close = difflib.get_close_matches(name, modules, n=3)
                hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
                raise UsageError(
                    f"[prune].{field_name}: the model has no layer named {name!r}",
                    f"{hint}Conv/Linear layers of this model: {_sample(weight_names)}",
                )
            if not any(_under(w, name) for w in weight_names):
                raise UsageError(
                    f"[prune].{field_name}: layer {name!r} holds no Conv/Linear weight, so pruning cannot act on it",
                    f"name a Conv/Linear layer or a block that holds some: {_sample(weight_names)}",
                )


def _sample(names: list[str], limit: int = 12) -> str:
    """The names, or when there are more than `limit` the first and the last few (the classifier is last)."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[: limit - 3]) + ", …, " + ", ".join(names[-3:]) + f" ({len(names)} in all)"


# ---------------------------------------------------------------------------------------------- magnitude


def _magnitude(model: torch.nn.Module, settings: PruneSection) -> set[str]:
    """Attach L1 masks (global or per layer, `layers` overrides); returns the names of the pruned layers."""
    from torch.nn.utils import prune

    layers = {n: m for n, m in _weight_layers(model).items() if not any(_under(n, i) for i in settings.ignore)}
    override: dict[str, float] = {}
    for prefix, amount in settings.layers.items():
        for name in layers:
            if _under(name, prefix):
                override[name] = amount
    pool = [(m, "weight") for n, m in layers.items() if n not in override]
    if pool and settings.scope == "global":
        prune.global_unstructured(pool, pruning_method=prune.L1Unstructured, amount=settings.sparsity)
    elif pool:
        for module, param in pool:
            prune.l1_unstructured(module, param, amount=settings.sparsity)
    for name, amount in override.items():
        prune.l1_unstructured(layers[name], "weight", amount=amount)
    return set(layers)


def _bake_masks(model: torch.nn.Module) -> None:
    """Make the zeros part of the plain `weight` parameter and drop the masks and hooks."""
    from torch.nn.utils import prune

    for module in model.modules():
        if prune.is_pruned(module) and hasattr(module, "weight_mask"):
            prune.remove(module, "weight")


# --------------------------------------------------------------------------------------------- structured


def _structured(
    model: torch.nn.Module, settings: PruneSection, args: tuple, reference_shapes: list[tuple]
) -> tuple[torch.nn.Module, set[str], dict[str, str], list[str]]:
    """Channel pruning with torch-pruning on a copy of `model`.

    Groups are pruned one at a time and the model is run after each: a group that breaks the forward
    pass or changes an output's shape is left alone (its root layer ignored) and the pruning restarts
    from the original weights, so the result never depends on a half-pruned state.
    """
    import torch_pruning as tp

    ignored = set(settings.ignore) | _output_layers(model, args)
    protected = sorted(ignored - set(settings.ignore))
    left_alone: dict[str, str] = {}
    notes = [f"output layer(s) kept whole so the outputs keep their shape: {', '.join(protected)}"] if protected else []
    ratio_cap = max(MAX_CHANNEL_FRACTION, settings.sparsity, *settings.layers.values())
    weight_names = set(_weight_layers(model))
    for _attempt in range(len(weight_names) + 1):
        candidate = copy.deepcopy(model)
        modules = dict(candidate.named_modules())
        name_of = {id(m): n for n, m in modules.items()}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                pruner = tp.pruner.MetaPruner(
                    candidate,
                    args,
                    importance=tp.importance.GroupMagnitudeImportance(p=2),
                    global_pruning=settings.scope == "global",
                    pruning_ratio=settings.sparsity,
                    pruning_ratio_dict={modules[n]: r for n, r in settings.layers.items()},
                    max_pruning_ratio=min(ratio_cap, 0.99),
                    ignored_layers=[modules[n] for n in sorted(ignored)],
                )
            except Exception as exc:  # noqa: BLE001 - torch-pruning's tracer raises anything
                raise ConversionError(
                    f"torch-pruning cannot trace this model for structured pruning: {type(exc).__name__}: {exc}",
                    'use method = "magnitude", or ignore the layers it trips on with [prune].ignore',
                ) from exc
            failure: tuple[str, str] | None = None
            pruned: set[str] = set()
            for group in pruner.step(interactive=True):
                root = name_of.get(id(group[0].dep.target.module), str(group[0].dep.target.module))
                members = {name_of[id(dep.target.module)] for dep, _ in group if id(dep.target.module) in name_of}
                coupled = sorted(  # other layers whose outputs lose the same channels (e.g. q, k with v)
                    name_of[id(dep.target.module)]
                    for dep, _ in group
                    if pruner.DG.is_out_channel_pruning_fn(dep.handler)
                    and id(dep.target.module) in name_of
                    and name_of[id(dep.target.module)] in weight_names
                    and name_of[id(dep.target.module)] != root
                )
                group.prune()
                problem = _forward_problem(candidate, args, reference_shapes)
                if problem is not None:
                    if coupled:
                        problem = f"(tied to {', '.join(coupled)}) {problem}"
                    failure = (root, problem)
                    break
                pruned |= members
        if failure is None:
            break
        root, problem = failure
        if any(_under(root, prefix) for prefix in settings.layers):
            raise UsageError(
                f"[prune].layers: layer {root!r} cannot be pruned structurally: removing its channels {problem}",
                'drop it from [prune].layers (or put it in [prune].ignore), or use method = "magnitude"',
            )
        left_alone[root] = f"removing its channels {problem}"
        ignored.add(root)
    else:  # pragma: no cover - each attempt ignores one more layer, so this needs a model with no layers
        raise ConversionError("structured pruning did not converge: every channel group breaks the model")
    seen = set()
    for w in caught:
        text = str(w.message).strip().splitlines()[0] if str(w.message).strip() else ""
        if text and text not in seen and "unwrapped" in text.lower():
            seen.add(text)
            notes.append(f"torch-pruning: {text}")
    pruned &= weight_names
    if not pruned:
        raise ConversionError(
            "structured pruning found no channel it can remove from this model"
            + (f" (left alone: {'; '.join(f'{k}: {v}' for k, v in left_alone.items())})" if left_alone else ""),
            'check [prune].ignore, or use method = "magnitude" (unstructured) instead',
        )
    return candidate.train(False), pruned, left_alone, notes


def _forward_problem(model: torch.nn.Module, args: tuple, reference_shapes: list[tuple]) -> str | None:
    """Why the pruned model no longer works (as a phrase), or None when it still does."""
    import torch

    try:
        with torch.no_grad():
            shapes = [tuple(t.shape) for t in _flat(model(*args))]
    except Exception as exc:  # noqa: BLE001 - whatever the model raises
        return f"breaks the forward pass ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
    if shapes != reference_shapes:
        return f"changes the output shapes from {reference_shapes} to {shapes}"
    return None


def _output_layers(model: torch.nn.Module, args: tuple) -> set[str]:
    """Conv/Linear layers whose output is a model output, plus the last one to run (the classifier)."""
    import torch

    produced: dict[int, str] = {}
    order: list[str] = []
    hooks = []
    for name, module in _weight_layers(model).items():

        def hook(_m: torch.nn.Module, _a: tuple, out: object, name: str = name) -> None:
            order.append(name)
            for t in _flat(out):
                produced[id(t)] = name

        hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            outs = _flat(model(*args))
    finally:
        for h in hooks:
            h.remove()
    found = {produced[id(t)] for t in outs if id(t) in produced}
    if order:
        found.add(order[-1])
    return found


# ------------------------------------------------------------------------------------------------ hand-off


def save_pruned_model(model: torch.nn.Module, example_inputs: dict[str, torch.Tensor], path: Path) -> Path:
    """Save the pruned model for the export worker processes as an ExportedProgram (`.pt2`).

    An ExportedProgram carries the pruned architecture itself, so a worker needs neither the pruning
    code nor a pickle: `torch.export.load` reads graph and weights. TFLite conversion goes through
    torch.export anyway, so a model that cannot be exported here could not be converted either.
    """
    import torch

    path = Path(path)
    try:
        with torch.no_grad():
            program = torch.export.export(model.train(False), tuple(example_inputs.values()))
        torch.export.save(program, str(path))
        reloaded = load_pruned_model(path)
        with torch.no_grad():
            args = tuple(example_inputs.values())
            gap = max(
                float((a - b).abs().max()) for a, b in zip(_flat(model(*args)), _flat(reloaded(*args)), strict=True)
            )
    except Exception as exc:
        raise ConversionError(
            f"the pruned model cannot be saved for the export workers: torch.export failed: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}",
            "the model must be exportable with torch.export (no data-dependent control flow) to be pruned",
        ) from exc
    if not gap <= 1e-5:
        raise ConversionError(f"the saved pruned model differs from the pruned model by {gap:g} on the example inputs")
    return path


def load_pruned_model(path: str | Path) -> torch.nn.Module:
    """The pruned model saved by `save_pruned_model`, ready for both converters (see
    `mobex.sources.exported_program_module`)."""
    from mobex.sources import exported_program_module

    return exported_program_module(Path(path))
