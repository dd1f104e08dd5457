"""Export stage: one platform's variants (convert once, then quantize/compress each variant).

`export_platform` is a plain top-level function taking only paths and strings, so the pipeline can
run the Android and the iOS export in separate processes: they run in parallel on two cores, and a
converter crash (a segfault in a native library) takes down only its own process.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mobex.artifacts import ExportedVariant


@dataclass
class ExportFailure:
    quantization: str
    message: str


@dataclass
class PlatformExport:
    platform: str
    variants: list[ExportedVariant] = field(default_factory=list)
    failures: list[ExportFailure] = field(default_factory=list)
    seconds: float = 0.0
    log_tail: str = ""


def output_names(recipe, count: int) -> list[str]:  # noqa: ANN001 - Recipe, kept import-light
    """Recipe output names, or output_0..N when the recipe does not name them."""
    if recipe.outputs and len(recipe.outputs) == count:
        return [o.name for o in recipe.outputs]
    return [f"output_{i}" for i in range(count)]


def example_inputs(recipe, validation) -> dict:  # noqa: ANN001
    """The first validation batch as torch tensors, in call order: real values trace best."""
    import torch

    feed = validation.feed(0)
    return {spec.name: torch.from_numpy(feed[spec.name].copy()) for spec in recipe.inputs}


def export_platform(
    recipe_path: str, platform: str, workdir: str, threads: int = 1, model_path: str | None = None
) -> PlatformExport:
    """Convert the recipe's model for one platform and produce every variant the recipe lists.

    `model_path`, when given, is the pruned model the pipeline saved (an ExportedProgram, see
    mobex.prune.pruning): it is exported instead of the recipe's own model."""
    import torch

    from mobex.data import load_validation_and_calibration
    from mobex.recipe import load_recipe
    from mobex.sources import load_model

    start = time.perf_counter()
    torch.set_num_threads(threads)
    recipe = load_recipe(recipe_path)
    validation, calibration = load_validation_and_calibration(recipe)
    if model_path is not None:
        from mobex.prune.pruning import load_pruned_model

        model = load_pruned_model(model_path)
    else:
        model = load_model(recipe)
    inputs = example_inputs(recipe, validation)
    with torch.inference_mode():
        out = model(*inputs.values())
    count = len(out) if isinstance(out, (tuple, list)) else 1
    names = output_names(recipe, count)
    out_dir = Path(workdir) / platform
    out_dir.mkdir(parents=True, exist_ok=True)
    if platform == "android":
        result = _export_android(recipe, model, inputs, names, calibration, out_dir)
    else:
        result = _export_ios(recipe, model, inputs, names, out_dir, calibration)
    result.seconds = time.perf_counter() - start
    return result


def export_platform_in_child(
    recipe_path: str, platform: str, workdir: str, log_path: str, model_path: str | None = None
) -> PlatformExport:
    """`export_platform` for a worker process: the converters' chatter (progress bars, version
    warnings, C++ logs) goes to a log file instead of the user's terminal; failures quote its tail."""
    from mobex.logs import quiet_third_party_logs

    quiet_third_party_logs()
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115 - lives as long as the process
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    result = export_platform(recipe_path, platform, workdir, model_path=model_path)
    if result.failures:
        text = Path(log_path).read_text(errors="replace").strip().splitlines()
        result.log_tail = "\n".join(text[-20:])
    return result


def _failure(quantization: str, exc: BaseException) -> ExportFailure:
    detail = str(exc) or type(exc).__name__
    if not hasattr(exc, "exit_code"):  # not a MobexError: keep the tail of the traceback for debugging
        tail = "".join(traceback.format_exception(exc)[-3:]).strip()
        detail = f"{type(exc).__name__}: {detail}\n{tail}"
    return ExportFailure(quantization, detail)


def int8_training_path(recipe) -> Path | None:  # noqa: ANN001 - Recipe
    """The training data the static int8 variant reads: what [quantization.finetune] trains on, else (with
    `search_held_out`) [data].training, whose every 10th sample checks the fallback search. None: neither."""
    q = recipe.quantization
    if q.finetune is not None:
        return q.finetune.data or recipe.data.training
    return recipe.data.training if q.search_held_out else None


def _int8_training_feeds(recipe) -> tuple[list[dict] | None, list[dict] | None]:  # noqa: ANN001 - Recipe
    """(training, held_out) feeds for the static int8 variant (`int8_training_path`).

    With [quantization.finetune], all of its training data (fine-tuning holds every 10th sample out itself);
    else only every 10th sample, for the fallback search's check; else neither."""
    from mobex.data import load_dataset
    from mobex.quantize.tflite.static_int8 import HOLDOUT_EVERY

    path = int8_training_path(recipe)
    if path is None:
        return None, None
    data = load_dataset(recipe, "training", path)
    if recipe.quantization.finetune is not None:
        return list(data.feeds()), None
    return None, [data.feed(i) for i in range(0, data.num_samples, HOLDOUT_EVERY)]


def _export_android(recipe, model, inputs, names, calibration, out_dir: Path) -> PlatformExport:  # noqa: ANN001
    from mobex.converters.tflite import convert_tflite
    from mobex.converters.tflite_metadata import metadata_from_recipe
    from mobex.quantize.tflite.recipes import quantize_tflite
    from mobex.quantize.tflite.static_int8 import Int8Options

    result = PlatformExport("android")
    stem = recipe.model.name
    try:
        base = convert_tflite(
            model, inputs, out_dir / f"{stem}-fp32.tflite", output_names=names, metadata=metadata_from_recipe(recipe)
        )
    except Exception as exc:
        result.failures = [_failure(v, exc) for v in recipe.android.variants]
        return result
    calib_feeds = list(calibration.feeds())
    training, held_out = _int8_training_feeds(recipe) if "int8" in recipe.android.variants else (None, None)
    for variant in recipe.android.variants:
        if variant == "fp32":
            result.variants.append(base)
            continue
        try:
            result.variants.append(
                quantize_tflite(
                    base,
                    variant,
                    out_dir / f"{stem}-{variant}.tflite",
                    calibration=calib_feeds,
                    int8_io=recipe.android.int8_io,
                    int8=Int8Options.from_recipe(recipe),
                    training=training if variant == "int8" else None,
                    held_out=held_out if variant == "int8" else None,
                )
            )
        except Exception as exc:
            result.failures.append(_failure(variant, exc))
    return result


def _export_ios(recipe, model, inputs, names, out_dir: Path, calibration=None) -> PlatformExport:  # noqa: ANN001
    from mobex.converters.coreml import CoreMLMetadata, convert_coreml
    from mobex.quantize.coreml.compress import compress_coreml

    result = PlatformExport("ios")
    target = recipe.ios.minimum_deployment_target
    metadata = CoreMLMetadata(
        name=recipe.model.name,
        version=recipe.model.version,
        description=recipe.model.description,
        author=recipe.model.author,
        license=recipe.model.license,
        input_descriptions={i.name: i.description for i in recipe.inputs if i.description},
        output_descriptions={o.name: o.description for o in recipe.outputs if o.description},
        labels=recipe.labels(),
        extra={"mobex.recipe_sha256": recipe.sha256},
        preprocessing=recipe.preprocessing,
        task=recipe.model.task,
        image_input=recipe.ios.image_input,
        classifier=recipe.ios.classifier,
    )
    stem = recipe.model.name
    bases: dict[str, ExportedVariant] = {}
    ios_feeds = list(calibration.feeds()) if calibration else None

    def base(precision: str) -> ExportedVariant:
        if precision not in bases:
            bases[precision] = convert_coreml(
                model,
                inputs,
                out_dir / f"{stem}-{precision}.mlpackage",
                precision=precision,
                deployment_target=target,
                output_names=names,
                metadata=metadata,
            )
        return bases[precision]

    for variant in recipe.ios.variants:
        try:
            if variant in ("fp32", "fp16"):
                result.variants.append(base(variant))
            else:
                result.variants.append(
                    compress_coreml(
                        base("fp16"),
                        variant,
                        out_dir / f"{stem}-{variant}.mlpackage",
                        deployment_target=target,
                        # Every compressed variant gets the calibration data: it chooses the weights'
                        # rounding and corrects the biases (coreml/gptq.py), besides calibrating w8a8.
                        calibration=ios_feeds,
                        weight_rounding=recipe.quantization.weight_rounding,
                    )
                )
        except Exception as exc:
            result.failures.append(_failure(variant, exc))
    return result
