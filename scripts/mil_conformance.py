"""Conformance of the MIL reference interpreter with coremltools' own MIL op tests.

Runs the op tests shipped in the coremltools wheel (coremltools/converters/mil/mil/ops/tests/iOS14..iOS18,
mlprogram backends, fp16 and fp32) with their Core ML runtime comparison served by mobex's interpreter
(`mobex.runtime.mil.conformance`), and prints a table per opset directory: pass / wrong / unsupported /
disputed / n/a, then every wrong and disputed case (a test expectation that contradicts the op's
specification, listed with the reason in mobex/runtime/mil/conformance_suite.py), the unsupported ops
and the reasons for n/a.

Usage: python scripts/mil_conformance.py [--opsets iOS14,iOS17] [--sample N] [-k EXPR]
                                         [--save cases.jsonl | --load cases.jsonl] [--json]

The whole suite (about 20,000 cases) takes tens of minutes of CPU; --sample 20 takes about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from mobex.runtime.mil.conformance import OPSET_DIRS
    from mobex.runtime.mil.conformance_suite import format_table, op_counts, reasons, run_suite, summarise

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opsets", default=",".join(OPSET_DIRS), help="test directories (default: all)")
    parser.add_argument("--sample", type=int, default=0, help="run every N-th collected case")
    parser.add_argument("-k", dest="select", default=None, help="pytest -k expression")
    parser.add_argument("--save", type=Path, help="write the per-case records (JSON lines) here")
    parser.add_argument("--load", type=Path, help="summarise saved records instead of running")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)

    if args.load:
        records = [json.loads(line) for line in args.load.read_text().splitlines() if line.strip()]
    else:
        dirs = tuple(d.strip() for d in args.opsets.split(",") if d.strip())
        unknown = [d for d in dirs if d not in OPSET_DIRS]
        if unknown:
            parser.error(f"unknown opset directories {unknown}; choose from {list(OPSET_DIRS)}")
        records = run_suite(dirs, sample=args.sample, select=args.select)
    if args.save:
        args.save.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = summarise(records)
    if args.json:
        print(json.dumps({"table": table, "unsupported_ops": op_counts(records, "unsupported")}, indent=2))
        return 0
    print(format_table(table))
    sections = (("wrong", "Wrong"), ("disputed", "Disputed expectations"), ("unsupported", "Unsupported"),
                ("n/a", "Not applicable"))  # fmt: skip
    for status, title in sections:
        rows = reasons(records, status)
        if not rows:
            continue
        print(f"\n{title} ({sum(n for n, _, _ in rows)} cases):")
        for n, test, detail in rows[: None if status != "n/a" else 40]:
            print(f"  {n:5d}  {test}: {detail[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
