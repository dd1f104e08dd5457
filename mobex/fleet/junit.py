"""One JUnit file for a fleet build: every recipe's test suites, renamed after the recipe, in one document.

Each recipe's own junit.xml (mobex.validate.report.render_junit: one <testsuite> per platform, one
<testcase> per gate) is copied in with its suite named `<model name>.<platform>` and its test cases'
classnames prefixed with the model name, so CI shows which recipe a gate belongs to. A recipe that
wrote no report (it failed before validation: bad recipe or data) gets one suite with one failing
test case, `build`, carrying the error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

MAX_JUNIT_BYTES = 16 << 20  # a recipe's own report; far larger means something else is in its place


def combined_junit(outcomes: list[Any]) -> bytes:
    """The fleet's junit.xml from the recipes' outcomes (mobex.fleet.run.RecipeOutcome)."""
    root = ET.Element("testsuites", name="mobex fleet")
    totals = {"tests": 0, "failures": 0, "errors": 0}
    for outcome in outcomes:
        for suite in _suites_of(outcome):
            for k in totals:
                totals[k] += int(suite.get(k, "0"))
            root.append(suite)
    for k, v in totals.items():
        root.set(k, str(v))
    ET.indent(root)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="utf-8") + b"\n"


def _suites_of(outcome: Any) -> list[ET.Element]:
    path = Path(outcome.out_dir) / "junit.xml"
    if outcome.exit_code in (0, 4) and path.is_file() and path.stat().st_size <= MAX_JUNIT_BYTES:
        suites = ET.fromstring(path.read_bytes()).findall("testsuite")
        for suite in suites:
            suite.set("name", f"{outcome.name}.{suite.get('name', '').removeprefix('mobex.')}")
            for case in suite.findall("testcase"):
                case.set("classname", f"{outcome.name}.{case.get('classname', '')}")
        return suites
    suite = ET.Element("testsuite", name=f"{outcome.name}.build", tests="1", failures="0", errors="1")
    case = ET.SubElement(suite, "testcase", classname=f"{outcome.name}.build", name="build")
    error = ET.SubElement(case, "error", message=outcome.message.splitlines()[0] if outcome.message else "failed")
    error.set("type", f"exit {outcome.exit_code}")
    error.text = outcome.message
    return [suite]
