"""The monitoring report as one self-contained page: time series as inline SVG (no JS, no external files),
in the style of the build's report.html (same CSS and axis helpers from mobex.validate.html)."""

from __future__ import annotations

import math
from datetime import datetime

from mobex.validate.html import CSS, _nice_ticks, _row, _svg_open, _table, esc, fmt

COLORS = ("#3867b5", "#3a8a3a", "#c77c12", "#8a3a8a")
LIMIT_COLOR = "#c0392b"
REF_COLOR = "#777777"


def _epoch(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").timestamp()


def series_svg(label: str, starts: list[str], series: list[tuple[str, list[float | None]]],
               refs: list[tuple[str, float, str]], y_label: str) -> str:  # fmt: skip
    """One line per series over the window starts; dashed horizontal lines for references and limits."""
    points = [v for _, values in series for v in values if v is not None and math.isfinite(v)]
    levels = [v for _, v, _ in refs if v is not None and math.isfinite(v)]
    if not starts or not points:
        return f"<p class='note'>No data for {esc(label)}.</p>"
    w, h, ml, mr, mt, mb = 760, 260, 64, 190, 14, 44
    pw, ph = w - ml - mr, h - mt - mb
    xs = [_epoch(s) for s in starts]
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = min(points + levels), max(points + levels)
    pad = max((y_hi - y_lo) * 0.12, abs(y_hi) * 0.02, 1e-6)
    y_lo, y_hi = y_lo - pad, y_hi + pad

    def sx(x: float) -> float:
        return ml + pw / 2 if x_hi == x_lo else ml + pw * (x - x_lo) / (x_hi - x_lo)

    def sy(y: float) -> float:
        return mt + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    frame = f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="#bbb"/>'
    parts = [_svg_open(w, h, label), frame]
    for t in _nice_ticks(y_lo, y_hi, 5):
        y = sy(t)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                     f'<text x="{ml - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{t:.4g}</text>')  # fmt: skip
    step = max(1, len(starts) // 6)
    for i in range(0, len(starts), step):
        parts.append(f'<text x="{sx(xs[i]):.1f}" y="{mt + ph + 15}" font-size="10.5" text-anchor="middle">'
                     f"{esc(starts[i][5:16].replace('T', ' '))}</text>")  # fmt: skip
    parts.append(f'<text x="{ml + pw / 2}" y="{h - 6}" font-size="11.5" text-anchor="middle">window start (UTC)</text>'
                 f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" font-size="11.5" text-anchor="middle">'
                 f"{esc(y_label)}</text>")  # fmt: skip
    legend_y = mt + 6
    for name, value, color in refs:
        if value is None or not math.isfinite(value):
            continue
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(value):.1f}" y2="{sy(value):.1f}" stroke="{color}" '
                     f'stroke-dasharray="6,4"><title>{esc(name)}: {value:.4g}</title></line>')  # fmt: skip
        legend_y += 16
        parts.append(f'<line x1="{ml + pw + 10}" x2="{ml + pw + 30}" y1="{legend_y - 4}" y2="{legend_y - 4}" '
                     f'stroke="{color}" stroke-dasharray="6,4"/><text x="{ml + pw + 34}" y="{legend_y}" font-size="11">'
                     f"{esc(name)} {value:.4g}</text>")  # fmt: skip
    for k, (name, values) in enumerate(series):
        color = COLORS[k % len(COLORS)]
        pts = [(sx(x), sy(v), v, s) for x, v, s in zip(xs, values, starts, strict=True) if v is not None]
        if len(pts) > 1:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="'
                         + " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in pts) + '"/>')  # fmt: skip
        for x, y, v, s in pts:
            parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3.5" fill="{color}"><title>{esc(s)} {esc(name)}: '
                         f"{v:.4g}</title></circle>")  # fmt: skip
        legend_y += 16
        parts.append(f'<circle cx="{ml + pw + 20}" cy="{legend_y - 4}" r="4" fill="{color}"/>'
                     f'<text x="{ml + pw + 34}" y="{legend_y}" font-size="11">{esc(name)}</text>')  # fmt: skip
    parts.append("</svg>")
    return f"<div class='plot'>{''.join(parts)}</div>"


def _limit_below(validated: float | None, drop: float | None) -> float | None:
    return None if validated is None or drop is None else validated - drop


def plots_html(report: dict) -> str:
    groups = [g for g in report["groups"] if g["segment"] == "all"]
    starts = [g["window_start"] for g in groups]
    t, val = report["thresholds"], report["validated"]
    metrics, lat = val.get("metrics") or {}, val.get("latency") or {}

    def col(key: str) -> list[float | None]:
        return [g.get(key) for g in groups]

    task = series_svg("accuracy and F1 per window", starts, [("accuracy", col("accuracy")), ("F1", col("f1"))], [
        ("validated accuracy", metrics.get("accuracy"), REF_COLOR),
        ("accuracy alert below", _limit_below(metrics.get("accuracy"), t.get("max_accuracy_drop")), LIMIT_COLOR),
    ], "on labelled predictions")  # fmt: skip
    ratio = t.get("max_latency_ratio")
    latency_refs = [("build p99", lat.get("p99_ms"), REF_COLOR), ("max p99", t.get("max_p99_ms"), LIMIT_COLOR)]
    if ratio and lat.get("p99_ms"):
        latency_refs.append((f"{ratio:g}x build p99", ratio * lat["p99_ms"], LIMIT_COLOR))
    latency = series_svg("latency per window", starts,
                         [("p50", col("p50_ms")), ("p90", col("p90_ms")), ("p99", col("p99_ms"))], latency_refs, "ms")
    drift = series_svg("largest PSI per window", starts, [("max PSI", col("max_psi"))],
                       [("PSI threshold", t.get("psi"), LIMIT_COLOR)], "PSI")  # fmt: skip
    rate = series_svg("predictions per second per window", starts, [("throughput", col("throughput_per_s"))],
                      [("min throughput", t.get("min_throughput_per_s"), LIMIT_COLOR)], "per second")  # fmt: skip
    return f"<div class='plots'>{task}{latency}{drift}{rate}</div>"


def groups_table(report: dict) -> str:
    head = ["window", "segment", "predictions", "labelled", "accuracy", "precision", "recall", "F1", "p50 ms",
            "p90 ms", "p99 ms", "per s", "max PSI", "drifted", "alerts"]  # fmt: skip
    rows = []
    for g in report["groups"]:
        cells = [esc(g["window_start"]), esc(g["segment"])] + [
            fmt(g.get(k)) for k in ("predictions", "labelled", "accuracy", "precision", "recall", "f1", "p50_ms",
                                    "p90_ms", "p99_ms", "throughput_per_s", "max_psi")  # fmt: skip
        ] + [esc(", ".join(g["drifted_features"][:3]) + ("…" if len(g["drifted_features"]) > 3 else "")),
             str(len(g["alerts"]))]  # fmt: skip
        rows.append(_row(cells, "bad" if g["alerts"] else "", numeric_from=2))
    return _table(head, rows)


def drift_table(report: dict) -> str:
    """Features of the 'all' window with the largest PSI."""
    groups = [g for g in report["groups"] if g["segment"] == "all" and g.get("drift")]
    if not groups:
        return "<p class='note'>No drift features were compared.</p>"
    worst = max(groups, key=lambda g: g.get("max_psi") or 0)
    rows = [_row([esc(f["name"]), esc(f["role"]), fmt(f["samples"]), fmt(f["psi"]), fmt(f["ks_p"]),
                  fmt(f["reference_mean"]), fmt(f["mean"]), esc("; ".join(f["reasons"]) or "ok")],
                 "bad" if f["drifted"] else "", numeric_from=2) for f in worst["drift"]]  # fmt: skip
    return (f"<p class='note'>Window {esc(worst['window_start'])} (largest PSI).</p>"
            + _table(["feature", "role", "samples", "PSI", "KS p", "reference mean", "mean", "verdict"], rows))


def render_monitor_html(report: dict) -> str:
    m, rec = report["model"], report["records"]
    ok = not report["alerts"]
    alerts = "".join(f"<li>{esc(a['message'])}</li>" for a in report["alerts"][:200])
    malformed = "".join(f"<li>{esc(k)}: {v}</li>" for k, v in rec["malformed_by_reason"].items())
    examples = "".join(f"<li><code>{esc(e)}</code></li>" for e in rec["malformed_examples"])
    sections = [
        f"<h1>Monitoring: {esc(m['name'])} {esc(m['version'])} ({esc(m['platform'])})</h1>",
        f"<p><span class='badge {'passed' if ok else 'failed'}'>"
        f"{'NO THRESHOLD CROSSED' if ok else str(len(report['alerts'])) + ' ALERT(S)'}</span></p>",
        f"<p class='meta'>Bundle <code>{esc(report['bundle'])}</code>: {esc(report['verification'])}.<br>"
        f"Telemetry <code>{esc(report['telemetry'])}</code>: {fmt(rec['lines'])} lines, {fmt(rec['used'])} predictions "
        f"of this model, {fmt(rec['malformed'])} malformed, {fmt(rec['other_model'] + rec['other_version'])} of other "
        f"models or versions. Window {esc(report['window'])}.<br>"
        f"Build latency: {esc(report['validated']['latency_source'])}.</p>",
    ]
    if alerts:
        sections.append(f"<h2>Alerts</h2><ul>{alerts}</ul>")
    sections += ["<h2>Over time (all records)</h2>", plots_html(report), "<h2>Per window and segment</h2>",
                 groups_table(report), "<h2>Drift features</h2>", drift_table(report)]  # fmt: skip
    if malformed:
        sections.append(f"<h2>Malformed lines</h2><ul>{malformed}</ul>")
        sections.append(f"<p class='note'>First places:</p><ul>{examples}</ul>")
    if report["notes"]:
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report["notes"]) + "</ul>")
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>mobex monitor: {esc(m['name'])} {esc(m['version'])}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(sections) + "\n</body></html>\n")  # fmt: skip
