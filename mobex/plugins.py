"""The extension points: export targets and the variants each offers, as registries.

A target (TFLite, Core ML, ExecuTorch, ...) is one module under `mobex/targets/` that registers itself with
`register_target` and each of its variants with `@register_variant`. Everything that needs to know which
targets and variants exist (the recipe's validators, default gates, up-front checks, the pipeline, the
bundle manifest, the tests) asks here, so adding a variant is one registered builder plus its tests.

This module stays import-light: the recipe validates variant names before any converter is loaded. The
target modules are imported on first use (`_load`), and they import their converters only when a
variant is built. Third-party targets can register through the `mobex.targets` entry-point group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

# Gate families: which default limits apply (mobex.metrics.limits). fp32 tight, fp16 looser, 8-bit kinds and
# low-bit (4-bit and below, sparse) judged on agreement with the original and accuracy drop.
FAMILIES: tuple[str, ...] = ("fp32", "fp16", "int8", "low-bit")
PLATFORMS: tuple[str, ...] = ("android", "ios")

# The targets mobex ships; each module registers itself when imported.
BUILTIN_TARGET_MODULES: tuple[str, ...] = ("mobex.targets.tflite", "mobex.targets.coreml", "mobex.targets.executorch")
ENTRY_POINT_GROUP = "mobex.targets"


@dataclass(frozen=True)
class VariantSpec:
    """One variant a target offers: how it is gated, what it needs, and the function that builds it.

    `build(session)` receives the target's export session (see mobex.targets.base) and returns an
    ExportedVariant. `calibration`: the variant calibrates static activation ranges, so the build refuses
    to start without enough calibration samples. `expected_ops`: op kinds a correct build of it contains
    (the target's tests check them). `min_os`: the lowest OS version (for the platform the target names,
    e.g. "iOS16") the variant runs on, or None. `compute`: "int8" when the variant computes in int8 to run
    faster (static or dynamic int8 activations): it never ships when it is slower than a float variant of the
    same target (mobex.pipeline.choose_shipped); "float" otherwise (weight-only variants compute in float).
    `platforms`: the platforms this variant serves when not every one its target serves (ExecuTorch's Core ML
    delegate variants are iOS only); empty: all of the target's.
    """

    target: str
    name: str
    family: str
    build: Callable[[Any], Any]
    min_os: str | None = None
    calibration: bool = False
    expected_ops: tuple[str, ...] = ()
    description: str = ""
    compute: str = "float"
    platforms: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        """`target:name`, the spelling that is unambiguous across targets (e.g. `coreml:int8-weights`)."""
        return f"{self.target}:{self.name}"


@dataclass(frozen=True)
class TargetInfo:
    """What the recipe and the bundle need to know of a target, without importing its converter.

    `default_for`: platforms on which an unprefixed variant name means this target (TFLite on Android,
    Core ML on iOS). `file_format` is the model's format in bundles and manifests (and the exported file's
    suffix). `variant_hint` lists the variant names for error messages (patterns such as `sparse-<1..99>`).
    """

    name: str
    platforms: tuple[str, ...]
    default_for: tuple[str, ...]
    file_format: str
    title: str = ""  # how messages name it ("TFLite", "Core ML")
    variant_hint: tuple[str, ...] = ()
    takes_torchscript: bool = False  # converts a TorchScript (.pt) source, not only torch.export graphs
    int64_as_int32: bool = False  # stores int64 inputs as int32: the data must fit (mobex.data checks it)
    model_is_folder: bool = False  # the model is a folder of files (an .mlpackage), not one file


_TARGETS: dict[str, TargetInfo] = {}
_TARGET_OBJECTS: dict[str, Any] = {}
_VARIANTS: dict[tuple[str, str], VariantSpec] = {}
_loaded = False


def register_target(info: TargetInfo, implementation: Any) -> None:
    """Register a target (its description and the object implementing mobex.targets.base.Target)."""
    if info.name in _TARGETS:
        raise ValueError(f"target {info.name!r} is registered twice")
    unknown = sorted(set(info.platforms) - set(PLATFORMS))
    if unknown or not set(info.default_for) <= set(info.platforms):
        raise ValueError(f"target {info.name!r}: platforms {info.platforms}, default_for {info.default_for}")
    for other in _TARGETS.values():
        both = set(other.default_for) & set(info.default_for)
        if both:
            raise ValueError(f"targets {other.name!r} and {info.name!r} are both the default for {sorted(both)}")
    _TARGETS[info.name] = info
    _TARGET_OBJECTS[info.name] = implementation


def register_variant(
    target: str,
    name: str,
    *,
    family: str,
    min_os: str | None = None,
    calibration: bool = False,
    expected_ops: tuple[str, ...] = (),
    description: str = "",
    compute: str = "float",
    platforms: tuple[str, ...] = (),
) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
    """Decorator: register `build(session) -> ExportedVariant` as variant `name` of `target`."""
    if family not in FAMILIES:
        raise ValueError(f"variant {target}:{name}: unknown family {family!r}; valid: {', '.join(FAMILIES)}")
    if compute not in ("float", "int8"):
        raise ValueError(f"variant {target}:{name}: compute must be 'float' or 'int8', not {compute!r}")
    if not name or ":" in name or name != name.strip():
        raise ValueError(f"variant name {name!r} must be non-empty, without ':' or surrounding spaces")
    if not set(platforms) <= set(PLATFORMS):
        raise ValueError(f"variant {target}:{name}: unknown platforms {platforms}; valid: {', '.join(PLATFORMS)}")

    def decorate(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        key = (target, name)
        if key in _VARIANTS:
            raise ValueError(f"variant {target}:{name} is registered twice")
        _VARIANTS[key] = VariantSpec(
            target, name, family, build, min_os, calibration, tuple(expected_ops), description, compute,
            tuple(platforms),
        )
        return build

    return decorate


def _load() -> None:
    """Import the built-in target modules and any entry-point plugins (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # set first: a target module's own registrations call back in here
    for module in BUILTIN_TARGET_MODULES:
        importlib.import_module(module)
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()


def targets() -> list[TargetInfo]:
    """Every registered target, in registration order."""
    _load()
    return list(_TARGETS.values())


def target_info(name: str) -> TargetInfo:
    _load()
    try:
        return _TARGETS[name]
    except KeyError:
        raise KeyError(f"unknown target {name!r}; known: {', '.join(_TARGETS)}") from None


def target(name: str) -> Any:
    """The object implementing target `name` (mobex.targets.base.Target)."""
    target_info(name)
    return _TARGET_OBJECTS[name]


def default_target(platform: str) -> TargetInfo:
    """The target an unprefixed variant name means on `platform`."""
    for info in targets():
        if platform in info.default_for:
            return info
    raise KeyError(f"no target is the default for platform {platform!r}")


def target_for_format(file_format: str) -> TargetInfo | None:
    """The target whose models have this file format (e.g. "tflite"), or None."""
    return next((t for t in targets() if t.file_format == file_format), None)


def variants_of(target_name: str) -> list[VariantSpec]:
    _load()
    return [spec for (t, _), spec in _VARIANTS.items() if t == target_name]


def find_variant(target_name: str, name: str) -> VariantSpec | None:
    _load()
    return _VARIANTS.get((target_name, name))


def variant(target_name: str, name: str) -> VariantSpec:
    spec = find_variant(target_name, name)
    if spec is None:
        raise KeyError(f"unknown variant {target_name}:{name}")
    return spec


@dataclass(frozen=True)
class VariantRequest:
    """One variant a recipe asks for on one platform: `"int8"` or `"executorch:int8"` in `[android] variants`."""

    platform: str
    target: str
    name: str
    spelled: str  # as written in the recipe, also the variant's name in reports ("int8", "executorch:int8")

    @property
    def spec(self) -> VariantSpec:
        return variant(self.target, self.name)


def parse_request(platform: str, spelled: str) -> VariantRequest:
    """Resolve a recipe variant name on a platform; ValueError (for the recipe's error) when it is unknown."""
    prefix, sep, name = spelled.partition(":")
    if not sep:
        info, name = default_target(platform), spelled
    else:
        try:
            info = target_info(prefix)
        except KeyError:
            known = ", ".join(t.name for t in targets())
            raise ValueError(f"unknown target {prefix!r} in variant {spelled!r}; targets: {known}") from None
        if platform not in info.platforms:
            raise ValueError(f"target {info.name!r} does not serve {platform} (it serves {', '.join(info.platforms)})")
    spec = find_variant(info.name, name)
    title = info.title or info.name
    if spec is None:
        raise ValueError(f"unknown {title} variant {name!r}; valid: {', '.join(variant_hint(info.name))}")
    if spec.platforms and platform not in spec.platforms:
        others = [s.name for s in variants_of(info.name) if not s.platforms or platform in s.platforms]
        raise ValueError(
            f"{title} variant {name!r} is for {', '.join(spec.platforms)}, not {platform}; "
            f"{platform} can have: {', '.join(others)}"
        )
    return VariantRequest(platform, info.name, name, spelled)


def variant_hint(target_name: str) -> tuple[str, ...]:
    """Variant names for messages: the target's own hint (with patterns), else every registered name."""
    info = target_info(target_name)
    return info.variant_hint or tuple(s.name for s in variants_of(target_name))


def resolve_gate_key(key: str) -> list[VariantSpec]:
    """The variants a `[gates.variants.<key>]` table applies to: `int8-weights` on every target that has it,
    `coreml:int8-weights` on Core ML only. Empty when none."""
    prefix, sep, name = key.partition(":")
    if sep:
        spec = find_variant(prefix, name) if prefix in {t.name for t in targets()} else None
        return [spec] if spec else []
    _load()
    return [spec for (_, n), spec in _VARIANTS.items() if n == key]
