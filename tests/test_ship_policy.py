"""Which variant ships: an explicit name, smallest-passing or fastest-passing; failures are reported."""

from __future__ import annotations

from mobex.pipeline import choose_shipped, ship_policies
from mobex.plugins import parse_request
from mobex.recipe import load_recipe
from mobex.validate.validator import VariantResult


def _variant(platform: str, name: str, size: int, passed: bool, p50: float | None = None) -> VariantResult:
    gates = ({"metric": "cosine_min", "passed": passed, "message": f"cosine_min {'ok' if passed else 'FAILED'}"},)
    latency = {"p50_ms": p50} if p50 is not None else None
    return VariantResult(
        parse_request(platform, name), "validated", size_bytes=size, gates=gates, passed=passed, latency=latency
    )


def _policies(sample_copy, android_ship: str, ios_ship: str = "smallest-passing") -> dict[str, str]:
    folder = sample_copy("digits_cnn")
    path = folder / "recipe.toml"
    text = path.read_text()
    text = text.replace(
        'variants = ["fp32", "fp16", "dynamic-int8", "int8"]',
        f'variants = ["fp32", "fp16", "int8"]\nship = "{android_ship}"',
    )
    text = text.replace(
        'minimum_deployment_target = "iOS16"', f'minimum_deployment_target = "iOS16"\nship = "{ios_ship}"'
    )
    path.write_text(text)
    return ship_policies(load_recipe(path))


VARIANTS = [
    ("android", "fp32", 500, True, 1.0),
    ("android", "fp16", 300, True, 2.0),
    ("android", "int8", 100, False, 0.5),
    ("ios", "fp32", 500, True, None),
    ("ios", "fp16", 250, True, None),
    ("ios", "int8-weights", 150, True, None),
]


def test_smallest_and_fastest_passing(sample_copy) -> None:
    variants = [_variant(*v) for v in VARIANTS]
    decision = choose_shipped(_policies(sample_copy, "fastest-passing"), variants)
    assert decision.failures == ()
    assert decision.shipped == {"android": "android/fp32", "ios": "ios/int8-weights"}  # int8 is faster but failed
    assert decision.rejected == ("android/int8: cosine_min FAILED",)


def test_fastest_passing_without_latency_falls_back_to_smallest(sample_copy) -> None:
    variants = [_variant(*v) for v in VARIANTS]
    decision = choose_shipped(_policies(sample_copy, "smallest-passing", "fastest-passing"), variants)
    assert decision.shipped["ios"] == "ios/int8-weights"
    assert any("fell back to smallest-passing" in n for n in decision.notes["ios/int8-weights"])


def test_named_variant_that_failed_blocks_the_platform(sample_copy) -> None:
    variants = [_variant(*v) for v in VARIANTS]
    decision = choose_shipped(_policies(sample_copy, "int8"), variants)
    assert "android" not in decision.shipped
    assert decision.failures == ("android: ship = 'int8' did not pass its gates",)


def test_nothing_passing_fails_the_platform(sample_copy) -> None:
    variants = [
        _variant(p, n, s, False, t) if p == "android" else _variant(p, n, s, ok, t) for p, n, s, ok, t in VARIANTS
    ]
    decision = choose_shipped(_policies(sample_copy, "smallest-passing"), variants)
    assert set(decision.shipped) == {"ios"}
    assert decision.failures == ("android: no variant passed its gates",)
    assert len(decision.rejected) == 3


def test_the_decision_is_a_value_and_blocking_keeps_the_rejections(sample_copy) -> None:
    variants = [_variant(*v) for v in VARIANTS]
    decision = choose_shipped(_policies(sample_copy, "smallest-passing"), variants)
    blocked = decision.blocked("pruned model: accuracy drop 0.05 > 0.02")
    assert blocked.shipped == {} and blocked.rejected == decision.rejected
    assert blocked.failures[-1].startswith("pruned model") and decision.shipped  # the original is unchanged


DELEGATION = {
    "delegate": "XNNPACK",
    "partitions": 5,
    "by_op": {"CONV_2D": {"xnnpack": 6, "reference": 0}, "PRELU": {"xnnpack": 0, "reference": 4}},
}
FALLBACK = {
    "fallback_layers": [
        {"name": "CONV_2D stem", "reason": "sensitive"},
        {"name": "ADD x", "reason": "between float ops"},
    ]
}


def _timed(name: str, size: int, p50: float, **extra) -> VariantResult:
    gates = ({"metric": "cosine_min", "passed": True, "message": "cosine_min ok"},)
    return VariantResult(
        parse_request("android", name), "validated", size_bytes=size, gates=gates, passed=True,
        latency={"p50_ms": p50, "threads": 1}, **extra,
    )  # fmt: skip


def test_an_int8_variant_slower_than_float_never_ships_and_the_report_says_why() -> None:
    variants = [
        _timed("fp32", 400, 1.0),
        _timed("fp16", 200, 1.1),
        _timed("int8", 100, 2.6, delegation=DELEGATION, quantization_details=FALLBACK),
    ]
    decision = choose_shipped({"android": "smallest-passing"}, variants)
    assert decision.shipped == {"android": "android/fp16"}  # int8 is smallest, but 2.6x slower than fp32
    (line,) = decision.rejected
    assert line.startswith("android/int8: not shipped: slower than android/fp32 in this build")
    assert "2.60x" in line and "5 XNNPACK partitions" in line and "4 ops on LiteRT reference kernels (PRELU x4)" in line
    assert "2 ops kept in float (1 between float ops, 1 sensitive)" in line
    assert line.endswith("(android/fp32: delegation unknown (this runtime does not list its delegated ops))")
    assert decision.notes["android/int8"] == (line,)
    named = choose_shipped({"android": "int8"}, variants)
    assert named.failures == ("android: ship = 'int8' is slower than float",)


def test_int8_within_timing_noise_or_faster_ships() -> None:
    variants = [_timed("fp32", 400, 1.0), _timed("int8", 100, 1.08), _timed("dynamic-int8", 90, 0.5)]
    decision = choose_shipped({"android": "smallest-passing"}, variants)
    assert decision.shipped == {"android": "android/dynamic-int8"} and decision.rejected == ()
    noisy = choose_shipped({"android": "int8"}, variants)
    assert noisy.shipped == {"android": "android/int8"}  # 8 % slower is within SLOWER_TOLERANCE
    tiny = [_timed("fp32", 400, 0.0070), _timed("int8", 100, 0.0081)]  # 16 % but 1.1 us: a microsecond model
    assert choose_shipped({"android": "int8"}, tiny).shipped == {"android": "android/int8"}
    tiny_but_far = [_timed("fp32", 400, 0.0041), _timed("int8", 100, 0.0094)]  # 2.3x, 5 us
    assert choose_shipped({"android": "int8"}, tiny_but_far).failures == (
        "android: ship = 'int8' is slower than float",
    )


def test_without_a_float_variant_no_comparison_is_invented() -> None:
    decision = choose_shipped({"android": "smallest-passing"}, [_timed("int8", 100, 9.0)])
    assert decision.shipped == {"android": "android/int8"}
    (note,) = decision.notes["android/int8"]
    assert "no float variant of tflite in this build" in note
    untimed = _timed("fp32", 400, 1.0)
    untimed = VariantResult(untimed.request, "validated", size_bytes=400, gates=untimed.gates, passed=True)
    decision = choose_shipped({"android": "smallest-passing"}, [untimed, _timed("int8", 100, 9.0)])
    assert decision.shipped == {"android": "android/int8"} and "no host latency" in decision.notes["android/int8"][0]


def test_weight_only_variants_are_not_held_to_the_speed_rule() -> None:
    variants = [_timed("fp32", 400, 1.0), _timed("int8-weights", 100, 1.5)]
    decision = choose_shipped({"android": "smallest-passing"}, variants)
    assert decision.shipped == {"android": "android/int8-weights"}  # float compute: it is about size


def test_a_gate_failing_int8_is_told_it_is_slow_too_without_a_second_rejection() -> None:
    failing = VariantResult(
        parse_request("android", "int8"), "validated", size_bytes=100, passed=False,
        gates=({"metric": "matched_iou_mean", "passed": False, "message": "matched_iou_mean FAILED"},),
        latency={"p50_ms": 2.5, "threads": 1}, delegation=DELEGATION,
    )  # fmt: skip
    decision = choose_shipped({"android": "smallest-passing"}, [_timed("fp32", 400, 1.0), failing])
    assert decision.rejected == ("android/int8: matched_iou_mean FAILED",)
    assert "slower than android/fp32" in decision.notes["android/int8"][0]


def test_fastest_passing_chooses_across_formats_one_bundle_per_platform() -> None:
    """ExecuTorch ships on Android when it passes and is faster than TFLite; otherwise TFLite does. On iOS a
    Core ML candidate has no latency off macOS, so fastest-passing falls back to the smallest there."""
    policies = {"android": "fastest-passing", "ios": "fastest-passing"}

    def android(et_passed: bool, et_p50: float) -> list[VariantResult]:
        return [
            _variant("android", "fp32", 500, True, 1.0),
            _variant("android", "int8", 150, True, 0.4),
            _variant("android", "executorch:fp32", 490, True, 1.3),
            _variant("android", "executorch:int8", 140, et_passed, et_p50),
        ]

    ios = [_variant("ios", "fp16", 250, True, None), _variant("ios", "executorch:fp32", 490, True, 0.9)]
    faster = choose_shipped(policies, [*android(True, 0.3), *ios])
    assert faster.shipped == {"android": "android/executorch:int8", "ios": "ios/fp16"}
    assert faster.failures == () and faster.rejected == ()
    assert any("fell back to smallest-passing" in n for n in faster.notes["ios/fp16"])
    failed = choose_shipped(policies, [*android(False, 0.3), *ios])
    assert failed.shipped["android"] == "android/int8"
    assert failed.rejected == ("android/executorch:int8: cosine_min FAILED",)
    slower = choose_shipped(policies, [*android(True, 0.5), *ios])
    assert slower.shipped["android"] == "android/int8"
    named = choose_shipped({"android": "executorch:int8"}, android(True, 0.9))
    assert named.shipped == {"android": "android/executorch:int8"}
