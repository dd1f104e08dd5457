"""`mobex init MODEL_SOURCE [--data PATH]`: a starter recipe, found by running the model.

What it finds, and how:
- inputs: an ExportedProgram (.pt2) names and sizes its inputs itself; for a factory or TorchScript the
  names come from `forward`'s signature and the shape from the first layer (Conv2d: a picture, tried at
  the data's crop or 224, 256, ... down to 8 pixels; Conv1d: a signal; Linear: features; Embedding:
  token ids), checked by running the model on a zero example. `--input name:1x3x224x224[:dtype]` says
  it outright. What it cannot tell becomes a `TODO` line in the recipe.
- task, from the output: (1, K) scores with labels (class folders) or K > 1 -> classification;
  (1, 1) -> regression; anything else -> other.
- data: a folder of pictures or sounds, or a CSV table, becomes `[data]` and `[preprocessing]`
  (class subfolders give `labels.txt`). Without `--data`, init writes random inputs of the right
  shapes (`data/init-random.npz`) so that a first `mobex build` runs; parity on random inputs says
  little, and the recipe says to replace them.
- variants: fp32, fp16, dynamic-int8 and int8 for Android; fp16 and int8-weights for iOS.
The recipe is written only after it loads cleanly with `mobex.recipe.load_recipe`.
"""

from __future__ import annotations

import inspect
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mobex.errors import UsageError

if TYPE_CHECKING:
    import numpy as np

IMAGE_SIZES = (224, 256, 192, 160, 128, 112, 96, 64, 48, 32, 28, 16, 8)
SIGNAL_LENGTHS = (16000, 8000, 4000, 1024, 256)
TOKENS = 128
RANDOM_SAMPLES = 32
RANDOM_DATA = "data/init-random.npz"
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@dataclass
class FoundInput:
    name: str
    shape: list[int] | None  # None: not found
    dtype: str = "float32"
    how: str = ""


@dataclass
class FoundData:
    """What `--data` holds: its kind, classes, and what the recipe's [preprocessing] should say."""

    path: str
    kind: str  # image | audio | tabular | npz
    classes: list[str] = field(default_factory=list)
    count: int = 0
    preprocessing: list[str] = field(default_factory=list)  # TOML lines
    image_size: int | None = None
    sample_rate: int | None = None
    columns: list[str] = field(default_factory=list)


def parse_input(text: str) -> FoundInput:
    """`name:1x3x224x224[:dtype]` -> FoundInput."""
    parts = text.split(":")
    try:
        shape = [int(d) for d in parts[1].lower().split("x")]
    except (IndexError, ValueError):
        raise UsageError(f"--input {text!r}: write name:1x3x224x224 or name:1x128:int64") from None
    return FoundInput(parts[0], shape, parts[2] if len(parts) > 2 else "float32", "given with --input")


def find_inputs(model: Any, source: str, given: list[FoundInput], data: FoundData | None) -> list[FoundInput]:
    """The model's inputs (see the module docstring); each has `shape = None` where it could not tell."""
    if given:
        return given
    if source.endswith(".pt2"):
        return _exported_inputs(source)
    names = _forward_names(model)
    guesses = _shape_guesses(model, data)
    if len(names) != 1 or not guesses:
        return [FoundInput(n, None, how="not found: fill in its shape and dtype") for n in names or ["input"]]
    for shape, dtype, how in guesses:
        if _runs(model, [_example(shape, dtype)]) is not None:
            return [FoundInput(names[0], shape, dtype, how)]
    return [FoundInput(names[0], None, how="no tried shape ran: fill in its shape")]


def _forward_names(model: Any) -> list[str]:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in params if p.kind in kinds and p.name != "self"]


def _exported_inputs(path: str) -> list[FoundInput]:
    import torch

    program = torch.export.load(path)
    found = []
    for spec, node in zip(program.graph_signature.input_specs, program.graph.nodes, strict=False):
        if spec.kind.name != "USER_INPUT":
            continue
        val = node.meta.get("val")
        shape = [int(d) for d in val.shape] if val is not None else None
        dtype = str(val.dtype).removeprefix("torch.") if val is not None else "float32"
        found.append(FoundInput(spec.arg.name, shape, dtype, "from the ExportedProgram"))
    return found


def _first_layer(model: Any) -> Any:
    import torch

    kinds = (torch.nn.Conv2d, torch.nn.Conv1d, torch.nn.Linear, torch.nn.Embedding)
    return next((m for m in model.modules() if isinstance(m, kinds)), None)


def _shape_guesses(model: Any, data: FoundData | None) -> list[tuple[list[int], str, str]]:
    import torch

    layer = _first_layer(model)
    if isinstance(layer, torch.nn.Conv2d):
        sizes = ([data.image_size] if data and data.image_size else []) + list(IMAGE_SIZES)
        c = layer.in_channels
        return [([1, c, s, s], "float32", f"a {c}-channel picture: first layer Conv2d, ran at {s}x{s}") for s in sizes]
    if isinstance(layer, torch.nn.Conv1d):
        return [
            ([1, layer.in_channels, n], "float32", f"a signal: first layer Conv1d, ran at {n}") for n in SIGNAL_LENGTHS
        ]
    if isinstance(layer, torch.nn.Linear):
        return [([1, layer.in_features], "float32", f"{layer.in_features} features: first layer Linear")]
    if isinstance(layer, torch.nn.Embedding):
        return [([1, TOKENS], "int64", f"token ids: first layer Embedding ({TOKENS} tokens assumed)")]
    return []


def _example(shape: list[int], dtype: str) -> Any:
    import torch

    return torch.zeros(shape, dtype=getattr(torch, dtype))


def _runs(model: Any, examples: list[Any]) -> Any:
    import torch

    try:
        with torch.no_grad():
            return model(*examples)
    except Exception:  # noqa: BLE001 - a wrong guess fails in any way the user's code fails
        return None


def guess_task(outputs: list[Any], data: FoundData | None, image: bool) -> tuple[str, str]:
    """(task, why) from the outputs of one example run."""
    if len(outputs) != 1:
        return "other", f"{len(outputs)} outputs"
    shape = list(outputs[0].shape)
    if len(shape) == 2 and shape[1] == 1:
        return "regression", "one value per sample"
    if len(shape) == 2 and shape[1] > 1 and (data and data.classes or image):
        why = f"{shape[1]} scores per sample"
        if data and data.classes and len(data.classes) != shape[1]:
            why += f" but {len(data.classes)} class folders: check the labels"
        return "classification", why
    return "other", f"output of shape {shape}"


def inspect_data(path: Path) -> FoundData:
    """Which kind of data `path` is, its classes, and the [preprocessing] lines to start from."""
    from mobex.datasources import audio, images
    from mobex.datasources.folders import media_files

    if path.is_file() and path.suffix.lower() in (".csv", ".tsv"):
        import csv

        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ","), [])
        return FoundData(str(path), "tabular", columns=[h for h in header if h != "label"])
    if path.is_file():
        return FoundData(str(path), "npz" if path.suffix == ".npz" else "unknown")
    for kind, module in (("image", images), ("audio", audio)):
        files = media_files(path, module.SUFFIXES) if path.is_dir() else []
        if files:
            classes = sorted({f.parent.name for f in files if f.parent != path})
            found = FoundData(str(path), kind, classes, len(files))
            if kind == "audio":
                import soundfile

                found.sample_rate = int(soundfile.info(str(files[0])).samplerate)
            return found
    raise UsageError(f"--data {path}: no pictures (.jpg/.png/.webp), sounds (.wav/.flac), .csv or .npz found")


def image_preprocessing(shape: list[int]) -> list[str]:
    crop = shape[2] if shape[2] == shape[3] else [shape[2], shape[3]]
    side = min(shape[2], shape[3])
    return [
        'kind = "image"',
        f"resize = {round(side * 256 / 224)}              # shorter side first (as 256 for a 224 crop)",
        f"crop = {crop}                      # then the centre crop: the input's size",
        f'color = "{"L" if shape[1] == 1 else "RGB"}"',
        "scale = 255.0                   # pixel / scale, then (x - mean) / std",
        f"mean = {IMAGENET_MEAN if shape[1] == 3 else [0.5]}   # TODO: the mean/std the model was trained with",
        f"std = {IMAGENET_STD if shape[1] == 3 else [0.5]}",
        'layout = "NCHW"',
    ]


def audio_preprocessing(shape: list[int], rate: int | None) -> list[str]:
    window = 1
    for d in shape[1:]:
        window *= d
    return [
        'kind = "audio"',
        f"sample_rate = {rate or 16000}             # TODO: the rate the model was trained at",
        "mono = true",
        f"window = {window}                 # samples per model input; hop defaults to the window",
        'features = "waveform"          # or "log-mel" (n_fft, mel_hop, n_mels: docs/preprocessing.md)',
    ]


def _toml(value: Any) -> str:
    import json

    return json.dumps(value)


@dataclass
class StarterRecipe:
    """Everything `init` found, ready to render as TOML."""

    name: str
    source: str
    weights: str | None
    inputs: list[FoundInput]
    task: str
    task_why: str
    outputs: list[str]
    data: FoundData | None
    labels_file: str | None = None
    notes: list[str] = field(default_factory=list)

    def render(self) -> str:
        lines = [
            "# Starter recipe written by `mobex init`. Check every TODO, then run: mobex build <this file>",
            '# Recipe reference: README.md ("Recipe reference"); preprocessing steps: docs/preprocessing.md',
            "",
            "[model]",
            f"name = {_toml(self.name)}",
            'version = "0.1.0"',
            f"source = {_toml(self.source)}",
        ]
        if self.weights:
            lines.append(f"weights = {_toml(self.weights)}")
        lines.append(f"task = {_toml(self.task)}              # guessed from the output: {self.task_why}")
        if self.labels_file:
            lines.append(f"labels = {_toml(self.labels_file)}       # written from the class folders: check it")
        elif self.task == "classification":
            lines.append('# labels = "labels.txt"       # TODO: one class name per line, in the order of the scores')
        lines += ['description = ""               # TODO: one line, shown in Xcode and Android Studio', ""]
        for found in self.inputs:
            lines += ["[[inputs]]", f"name = {_toml(found.name)}"]
            if found.shape is None:
                lines.append(f"# shape = [1, ...]            # TODO: {found.how}")
            else:
                lines.append(f"shape = {_toml(found.shape)}       # {found.how}")
            lines += [f"dtype = {_toml(found.dtype)}", ""]
        for name in self.outputs:
            lines += ["[[outputs]]", f"name = {_toml(name)}", ""]
        lines += self._preprocessing() + self._data() + self._platforms()
        return "\n".join(lines) + "\n"

    def _preprocessing(self) -> list[str]:
        if self.data is None or not self.data.preprocessing:
            return []
        return ["[preprocessing]                 # how raw data becomes the input (docs/preprocessing.md)"] + [
            *self.data.preprocessing,
            "",
        ]

    def _data(self) -> list[str]:
        lines = ["[data]"]
        if self.data is None:
            lines.append(
                f"validation = {_toml(RANDOM_DATA)}   # TODO: random inputs, so a first build runs: use real data"
            )
        else:
            where = "folder" if self.data.kind in ("image", "audio") else "file"
            lines.append(f"validation = {_toml(self.data.path)}   # {self.data.kind} {where}")
        lines.append("# calibration = ...              # int8 calibration data; defaults to the validation data")
        count = self.data.count if self.data is not None else RANDOM_SAMPLES
        if 0 < count < 32:
            lines.append(f"min_calibration_samples = {count}     # TODO: only {count} samples; int8 wants 100s")
        return [*lines, ""]

    def _platforms(self) -> list[str]:
        return [
            "[android]",
            'variants = ["fp32", "fp16", "dynamic-int8", "int8"]',
            "",
            "[ios]",
            'variants = ["fp16", "int8-weights"]',
            'minimum_deployment_target = "iOS16"',
        ]


def bundle_name(source: str) -> str:
    import re

    stem = Path(source.partition(":")[0]).stem if not source.endswith((".pt", ".pt2")) else Path(source).stem
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._") or "model"
    return name[:64]


def random_inputs(inputs: list[FoundInput], model: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """RANDOM_SAMPLES random samples per input: uniform [0, 1) floats, ids below the embedding size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    layer = _first_layer(model)
    vocab = int(getattr(layer, "num_embeddings", 2))
    out = {}
    for found in inputs:
        assert found.shape is not None
        shape = (RANDOM_SAMPLES * found.shape[0], *found.shape[1:])
        if found.dtype.startswith("float"):
            out[found.name] = rng.random(shape, dtype=np.float32).astype(found.dtype)
        else:
            out[found.name] = rng.integers(0, vocab, size=shape).astype(found.dtype)
    return out


def _preprocessing_lines(data: FoundData, inputs: list[FoundInput]) -> list[str]:
    shape = inputs[0].shape if len(inputs) == 1 else None
    if data.kind == "image" and shape is not None and len(shape) == 4:
        return image_preprocessing(shape)
    if data.kind == "audio" and shape is not None:
        return audio_preprocessing(shape, data.sample_rate)
    if data.kind == "tabular":
        return ['kind = "tabular"', f"feature_names = {_toml(data.columns)}   # the input's columns, in order"]
    return []


def init_recipe(
    source: str,
    out: Path,
    *,
    data: Path | None = None,
    weights: Path | None = None,
    name: str | None = None,
    inputs: list[str] | None = None,
    force: bool = False,
) -> StarterRecipe:
    """Write a starter recipe for `source` at `out` (and labels / random data next to it); return what it found."""
    import torch

    from mobex.sources import load_source

    out = out.resolve()
    if out.exists() and not force:
        raise UsageError(f"{out} exists", "pass --force to overwrite it, or --out another file")
    base = out.parent
    base.mkdir(parents=True, exist_ok=True)
    rel = _relative_source(source, base)
    weights_rel = os.path.relpath(weights.resolve(), base) if weights else None
    model = load_source(base, rel, base / weights_rel if weights_rel else None)
    found_data = inspect_data(data.resolve()) if data is not None else None
    if found_data is not None:
        found_data.path = os.path.relpath(found_data.path, base)
    found = find_inputs(
        model, str(base / rel) if rel.endswith(".pt2") else rel, [parse_input(t) for t in inputs or []], found_data
    )
    known = all(f.shape is not None for f in found)
    outputs: list[Any] = []
    if known:
        result = _runs(model, [_example(f.shape, f.dtype) for f in found])  # type: ignore[arg-type]
        outputs = [t for t in torch.utils._pytree.tree_leaves(result) if isinstance(t, torch.Tensor)]
    image = bool(found and found[0].shape and len(found[0].shape) == 4)
    task, why = guess_task(outputs, found_data, image) if outputs else ("other", "the model could not be run")
    starter = StarterRecipe(
        name=name or bundle_name(source),
        source=rel,
        weights=weights_rel,
        inputs=found,
        task=task,
        task_why=why,
        outputs=["logits"] if task == "classification" else [f"output_{i}" for i in range(len(outputs))],
        data=found_data,
    )
    if found_data is not None:
        found_data.preprocessing = _preprocessing_lines(found_data, found)
        if found_data.classes and task == "classification":
            _write_new(base / "labels.txt", "\n".join(found_data.classes) + "\n", force)
            starter.labels_file = "labels.txt"
    elif known:
        import numpy as np

        (base / RANDOM_DATA).parent.mkdir(parents=True, exist_ok=True)
        np.savez(base / RANDOM_DATA, **random_inputs(found, model))
    _write_checked(out, starter.render(), check=known)
    return starter


def _relative_source(source: str, base: Path) -> str:
    if source.endswith((".pt", ".pt2")):
        return os.path.relpath(Path(source).resolve(), base)
    module = source.partition(":")[0]
    if not (base / f"{module.replace('.', '/')}.py").exists() and not (base / module).is_dir():
        if Path(f"{module}.py").exists():
            raise UsageError(
                f"{module}.py is not in {base}, the recipe's folder",
                "write the recipe next to the model code (--out in that folder): factories are imported from there",
            )
    return source


def _write_new(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        return  # keep the user's own file
    path.write_text(text, encoding="utf-8")


def _write_checked(out: Path, text: str, *, check: bool) -> None:
    """Write atomically; when every input is known, only a recipe that `load_recipe` accepts."""
    from mobex.recipe import load_recipe

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".toml", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        if check:
            load_recipe(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def register(app: Any) -> None:
    """Add `mobex init` to the CLI app."""
    app.command("init")(init)


def init(
    source: Annotated[str, typer.Argument(help="'module:function' (a factory next to the recipe), a .pt or a .pt2")],
    data: Annotated[
        Path | None, typer.Option("--data", help="Pictures or sounds (class subfolders give labels), or a CSV")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Where to write the recipe")] = Path("recipe.toml"),
    weights: Annotated[Path | None, typer.Option("--weights", help="safetensors or a state_dict file")] = None,
    name: Annotated[str | None, typer.Option("--name", help="Bundle name (default: from the source)")] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", help="An input as name:1x3x224x224[:dtype]; repeat for several")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing files")] = False,
) -> None:
    """Write a starter recipe: inputs found by running the model, task guessed from its output, data and
    preprocessing from --data, variants per platform, and TODO comments for what to check."""
    starter = init_recipe(source, out, data=data, weights=weights, name=name, inputs=inputs, force=force)
    typer.echo(f"wrote {out}: {len(starter.inputs)} input(s), task {starter.task!r} ({starter.task_why})")
    for found in starter.inputs:
        typer.echo(f"  input {found.name}: {found.shape if found.shape else 'TODO'} {found.dtype} ({found.how})")
    todo = [f.name for f in starter.inputs if f.shape is None]
    if todo:
        typer.echo(f"fill in the shape of {', '.join(todo)} in {out}, then: mobex build {out}")
    else:
        typer.echo(f"next: read the TODO lines in {out}, then: mobex build {out}")
