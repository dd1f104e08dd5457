"""The three build reports: report.json (the contract), report.html (for people), junit.xml (for CI).

All three are written from the same dict, each completely or not at all (temp file + rename), also
when a gate fails: CI keeps them as artifacts and they say which gate failed and by how much.
"""

from __future__ import annotations

import html
import json
import os
import tempfile
from pathlib import Path
from xml.etree import ElementTree as ET

REPORT_SCHEMA = "https://mobex.dev/schemas/build-report/v1"


def write_atomic(path: Path, data: bytes) -> None:
    """Write a whole file or nothing: temp file in the same folder, fsync, rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def report_json_bytes(report: dict) -> bytes:
    return (json.dumps(report, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def write_reports(report: dict, out_dir: Path) -> dict[str, Path]:
    """report.json, report.html and junit.xml into out_dir."""
    paths = {
        "json": out_dir / "report.json",
        "html": out_dir / "report.html",
        "junit": out_dir / "junit.xml",
    }
    write_atomic(paths["json"], report_json_bytes(report))
    write_atomic(paths["html"], render_html(report).encode())
    write_atomic(paths["junit"], render_junit(report))
    return paths


def render_junit(report: dict) -> bytes:
    """One <testcase> per gate per variant, plus one per variant that could not be converted."""
    suites = ET.Element("testsuites", name=f"mobex {report['recipe']['name']} {report['recipe']['version']}")
    by_platform: dict[str, list[dict]] = {}
    for variant in report["variants"]:
        by_platform.setdefault(variant["platform"], []).append(variant)
    for platform, variants in sorted(by_platform.items()):
        suite = ET.SubElement(suites, "testsuite", name=f"mobex.{platform}")
        tests = failures = 0
        for variant in variants:
            classname = f"mobex.{platform}.{variant['quantization']}"
            cases = variant["gates"] or [{"metric": "convert", "passed": False, "message": variant["status"]}]
            for gate in cases:
                tests += 1
                case = ET.SubElement(suite, "testcase", classname=classname, name=gate["metric"])
                if not gate["passed"]:
                    failures += 1
                    failure = ET.SubElement(case, "failure", message=gate["message"], type="GateFailed")
                    failure.text = gate["message"]
                else:
                    ET.SubElement(case, "system-out").text = gate["message"]
        suite.set("tests", str(tests))
        suite.set("failures", str(failures))
        suite.set("errors", "0")
    ET.indent(suites)
    return b'<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(suites, encoding="utf-8") + b"\n"


def _fmt(value: object, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _latency_svg(variants: list[dict], reference: dict) -> str:
    """A small horizontal bar chart of p50 latency (p90 as a whisker), inline SVG: no server, no JS."""
    rows = [("original (torch)", reference.get("latency"))] + [
        (f"{v['platform']}/{v['quantization']}", v.get("latency")) for v in variants
    ]
    rows = [(name, lat) for name, lat in rows if lat]
    if not rows:
        return "<p>No latency measured.</p>"
    top = max(lat["p90_ms"] for _, lat in rows) or 1.0
    height = 22 * len(rows) + 10
    parts = [f'<svg width="640" height="{height}" role="img" aria-label="p50 latency per variant">']
    for i, (name, lat) in enumerate(rows):
        y = 5 + 22 * i
        w50 = 400 * lat["p50_ms"] / top
        w90 = 400 * lat["p90_ms"] / top
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{html.escape(name)}</text>')
        parts.append(f'<rect x="170" y="{y + 3}" width="{w50:.1f}" height="14" fill="#4c78a8"/>')
        parts.append(f'<line x1="{170 + w50:.1f}" x2="{170 + w90:.1f}" y1="{y + 10}" y2="{y + 10}" stroke="#333"/>')
        parts.append(f'<text x="{175 + w90:.1f}" y="{y + 14}" font-size="11">{lat["p50_ms"]:.3f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)


def render_html(report: dict) -> str:
    """A self-contained page: status, variants table, gates, data checks, timings."""
    recipe = report["recipe"]
    ok = report["status"] == "passed"
    rows = []
    for v in report["variants"]:
        p = v.get("parity") or {}
        lat = v.get("latency") or {}
        gates_failed = [g["message"] for g in v["gates"] if not g["passed"]]
        rows.append(
            "<tr class='{cls}'><td>{platform}</td><td>{q}</td><td>{size}</td><td>{backend}</td><td>{status}</td>"
            "<td>{mae}</td><td>{cos}</td><td>{snr}</td><td>{agree}</td><td>{acc}</td><td>{p50}</td>"
            "<td>{gates}</td><td>{shipped}</td></tr>".format(
                cls="ok" if v["passed"] else "bad",
                platform=html.escape(v["platform"]),
                q=html.escape(v["quantization"]),
                size=_size(v.get("size_bytes")),
                backend=html.escape(v.get("backend") or "—"),
                status=html.escape(v["status"]),
                mae=_fmt(p.get("max_abs_error")),
                cos=_fmt(p.get("cosine_min"), 6),
                snr=_fmt(p.get("snr_db")),
                agree=_fmt(p.get("top1_agreement")),
                acc=_fmt(p.get("accuracy")),
                p50=_fmt(lat.get("p50_ms")),
                gates="passed" if not gates_failed else "<br>".join(html.escape(m) for m in gates_failed),
                shipped="✔" if v["shipped"] else "",
            )
        )
    checks = "".join(
        f"<tr class='{'ok' if c['passed'] else 'warn'}'><td>{html.escape(c['name'])}</td>"
        f"<td>{html.escape(c['detail'])}</td></tr>"
        for c in report.get("data_checks", [])
    )
    timings = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.2f} s</td></tr>" for k, v in report["timings"].items())
    failures = "".join(f"<li>{html.escape(f)}</li>" for f in report["failures"])
    ref = report["reference"]
    ref_metrics = ", ".join(f"{k} = {_fmt(v)}" for k, v in (ref.get("metrics") or {}).items()) or "no labels"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>mobex report: {html.escape(recipe["name"])} {html.escape(recipe["version"])}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 14px; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; text-align: left; vertical-align: top; }}
th {{ background: #f0f0f0; }}
tr.bad td {{ background: #fde8e8; }} tr.warn td {{ background: #fff6db; }}
.status {{ font-size: 1.3em; padding: .4em .8em; display: inline-block; border-radius: 4px; }}
.passed {{ background: #d9f2d9; }} .failed {{ background: #f8d0d0; }}
.note {{ color: #666; font-size: 13px; }}
</style></head><body>
<h1>{html.escape(recipe["name"])} {html.escape(recipe["version"])}</h1>
<p class="status {"passed" if ok else "failed"}">{"PASSED" if ok else "FAILED"}</p>
{f"<h2>Failures</h2><ul>{failures}</ul>" if failures else ""}
<p>Recipe <code>{html.escape(recipe["path"])}</code> (sha256 {html.escape(recipe["sha256"][:16])}…), task
{html.escape(recipe["task"])}. Original model: {ref_metrics}.</p>
<h2>Variants</h2>
<table><tr><th>platform</th><th>variant</th><th>size</th><th>backend</th><th>status</th><th>max abs err</th>
<th>cosine min</th><th>SNR dB</th><th>top-1 agreement</th><th>accuracy</th><th>p50 ms</th><th>gates</th>
<th>shipped</th></tr>
{"".join(rows)}</table>
<h2>Latency (p50, whisker to p90)</h2>
{_latency_svg(report["variants"], ref)}
<p class="note">{html.escape(report.get("latency_note", ""))}</p>
<h2>Data checks</h2><table><tr><th>check</th><th>found</th></tr>{checks}</table>
<h2>Wall time per stage</h2><table>{timings}</table>
<p class="note">mobex {html.escape(report["mobex_version"])}; generated from report.json.</p>
</body></html>
"""


# Fields that change from run to run (wall times, latency measurements, absolute paths of this
# machine). The copy of the report inside a bundle leaves them out, so that two builds of the
# same recipe with the same SOURCE_DATE_EPOCH give byte-identical bundles (signature aside).
_VOLATILE_VARIANT_KEYS = ("latency", "latency_by_threads", "export_seconds", "validate_seconds")


def bundled_report(report: dict) -> dict:
    """The reproducible subset of a build report that goes into bundles."""
    out = json.loads(json.dumps(report))  # deep copy
    out.pop("timings", None)
    out.pop("bundles", None)
    out["recipe"]["path"] = Path(out["recipe"]["path"]).name
    for entry in out.get("data", {}).values():
        entry["path"] = Path(entry["path"]).name
    out["reference"] = {"backend": out["reference"]["backend"], "metrics": out["reference"]["metrics"]}
    for variant in out["variants"]:
        for key in _VOLATILE_VARIANT_KEYS:
            variant.pop(key, None)
        variant["gates"] = [g for g in variant["gates"] if g["metric"] != "p50_ms"]
    out["note"] = "latency and wall times vary between runs: see the build's report.json"
    return out
