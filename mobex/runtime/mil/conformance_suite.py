"""Run coremltools' MIL op tests through the interpreter (the `conformance` pytest plugin) in a
separate pytest process, and summarise the per-case records it writes.

    records = run_suite(sample=20)                 # every 20th case of each test function
    print(format_table(summarise(records)))

The tests run in their own process because the plugin patches coremltools process-wide and sets
the environment coremltools' test configuration reads at import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .conformance import OPSET_DIRS, STATUSES, tests_dir

ROOT = Path(__file__).resolve().parents[3]  # the directory holding the `mobex` package


def run_suite(
    opset_dirs: tuple[str, ...] = OPSET_DIRS,
    *,
    sample: int = 0,
    select: str | None = None,
    timeout: float | None = None,
) -> list[dict[str, Any]]:
    """Run the op tests of `opset_dirs` (every `sample`-th collected case when > 1; `select` is pytest -k)
    under the conformance plugin and return one record per case."""
    base = tests_dir()
    with tempfile.TemporaryDirectory(prefix="mobex-mil-conformance-") as tmp:
        report = Path(tmp) / "cases.jsonl"
        args = [
            sys.executable,
            "-m",
            "pytest",
            *[str(base / d) for d in opset_dirs],
            "-p",
            "mobex.runtime.mil.conformance",
            "-p",
            "no:cacheprovider",
            "--mil-report",
            str(report),
            "--mil-sample",
            str(sample),
            "--rootdir",
            str(base),
            "-o",
            "addopts=",
            "-q",
            "--tb=no",
            "--no-header",
            "-W",
            "ignore",
        ]
        if select:
            args += ["-k", select]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        env["TQDM_DISABLE"] = "1"
        proc = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout, check=False)
        if not report.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
            raise RuntimeError(f"the conformance run produced no records (exit {proc.returncode}):\n{tail}")
        return [json.loads(line) for line in report.read_text(encoding="utf-8").splitlines() if line.strip()]


@dataclass(frozen=True)
class Dispute:
    """A test case whose expected values contradict the op's specification (the interpreter follows the spec)."""

    test: str  # iOSxx/test_file.py::TestClass::test_function
    params: str  # a substring of the case's parameters ("" for all of them)
    reason: str


DISPUTES = (
    Dispute(
        "iOS14/test_normalization.py::TestNormalizationLocalResponseNorm::test_builder_to_backend_smoke",
        "precision='fp32'",
        "the hand-written values normalise over axis -3 (the NeuralNetwork LRN layer's rule; size 1 for this "
        "(1, 3, 2) input); the MIL op is specified on x [n, C, *D] over channels C (axis 1), as torch computes "
        "(see ops_nn._local_response_norm)",
    ),
    *(
        Dispute(
            test,
            "precision='fp32'",
            "the hand-written 7.899 stands for 1 + 4*1.5 + 0.9 = 7.9 exactly (box 1 sampled at row 1.5, column 0.9); "
            "close enough for the fp16 tolerance the test was written for, not for fp32's 1e-4",
        )
        for test in (
            "iOS16/test_image_resizing.py::TestCropResize::test_builder_to_backend_ios16",
            "iOS17/test_image_resizing.py::TestCropResize::test_builder_to_backend_ios17",
        )
    ),
    Dispute(
        "iOS15/test_image_resizing.py::TestCropResize::test_builder_to_backend_smoke",
        "",
        "the expected values are those of resizing the whole 4x4 image (UNALIGN_CORNERS grid 0.5, 2.5), whatever "
        "the box; the box given ([2, 2, 1, 1] normalised, rows and columns 6 down to 3 of a 4x4 image) lies "
        "outside the image, where crop_resize reads the padding value",
    ),
)


def apply_disputes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Records with each `wrong` case listed in DISPUTES marked `disputed` (its reason in front)."""
    out = []
    for rec in records:
        dispute = next((d for d in DISPUTES if case_test(rec["nodeid"]) == d.test and d.params in rec["nodeid"]), None)
        if rec["status"] == "wrong" and dispute is not None:
            rec = {**rec, "status": "disputed", "detail": f"{dispute.reason}; interpreter: {rec['detail']}"}
        out.append(rec)
    return out


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{opset dir: {status: count}} plus a "total" row (disputed cases counted apart from wrong)."""
    table: dict[str, dict[str, int]] = {}
    for rec in apply_disputes(records):
        row = table.setdefault(rec["opset_dir"], dict.fromkeys(STATUSES, 0))
        row[rec["status"]] += 1
    total = dict.fromkeys(STATUSES, 0)
    for row in table.values():
        for k, v in row.items():
            total[k] += v
    ordered = {k: table[k] for k in sorted(table)}
    ordered["total"] = total
    return ordered


def executed_share(row: dict[str, int]) -> float:
    """Share of the cases that reach a runtime comparison which the interpreter executed."""
    ran = row["pass"] + row["wrong"] + row.get("disputed", 0)
    reached = ran + row["unsupported"]
    return ran / reached if reached else 1.0


def format_table(table: dict[str, dict[str, int]]) -> str:
    lines = [
        "| opset tests | pass | wrong | disputed | unsupported | n/a | executed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for opset, row in table.items():
        name = f"**{opset}**" if opset == "total" else opset
        lines.append(
            f"| {name} | {row['pass']} | {row['wrong']} | {row.get('disputed', 0)} | {row['unsupported']} "
            f"| {row['n/a']} | {100 * executed_share(row):.1f} % |"
        )
    return "\n".join(lines)


def case_test(nodeid: str) -> str:
    """`iOS17/test_x.py::TestY::test_z` of a node id (parameters dropped)."""
    tail = nodeid.replace("\\", "/").split("/tests/")[-1]
    return tail.split("[")[0]


def reasons(records: list[dict[str, Any]], status: str) -> list[tuple[int, str, str]]:
    """(count, test, detail) for the cases of `status`, most frequent first."""
    counts = Counter((case_test(r["nodeid"]), r["detail"]) for r in apply_disputes(records) if r["status"] == status)
    return [(n, test, detail) for (test, detail), n in counts.most_common()]


def op_counts(records: list[dict[str, Any]], status: str) -> Counter:
    """How many cases of `status` each op (unsupported) or test file appears in."""
    counter: Counter = Counter()
    for r in records:
        if r["status"] == status:
            for op in r.get("unsupported") or [case_test(r["nodeid"]).split("::")[0]]:
                counter[op] += 1
    return counter
