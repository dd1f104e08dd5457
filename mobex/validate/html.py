"""report.html: the build report for people, one self-contained page (no server, no JS, no external CSS).

Rendered from the report.json dict alone: tables for variants, parity, task metrics, latency, gates
and data checks, and inline SVG plots (size vs accuracy, absolute-error histograms per variant,
latency distributions). Keys it does not know (added by other stages, e.g. pruning) are shown
generically rather than dropped, and a missing key never breaks the page.
"""

from __future__ import annotations

import html
import json
import math

import numpy as np

PLATFORM_COLORS = {"android": "#3a8a3a", "ios": "#3867b5", "original": "#555555"}
_KNOWN_TOP_LEVEL = {
    "schema", "mobex_version", "status", "failures", "recipe", "data", "data_checks", "reference", "variants",
    "shipped", "bundles", "latency_note", "provenance", "timings", "rejected_variants", "pruning", "note",
    "baseline",
}  # fmt: skip
_KNOWN_VARIANT = {
    "id", "target", "platform", "quantization", "status", "size_bytes", "backend", "parity", "latency",
    "latency_by_threads", "gates", "passed", "shipped", "notes", "inputs", "outputs", "export_seconds",
    "validate_seconds", "gates_not_applied", "delegation",
}  # fmt: skip

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px 32px; color: #1d1d1f;
       max-width: 1400px; }
h1 { margin: 0 0 6px; font-size: 26px; } h2 { margin: 28px 0 8px; font-size: 19px;
  border-bottom: 1px solid #ddd; padding-bottom: 4px; } h3 { font-size: 15px; margin: 16px 0 6px; }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13px; }
td, th { border: 1px solid #d4d4d4; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f2f2f2; font-weight: 600; white-space: nowrap; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bad td { background: #fdecec; } tr.warn td { background: #fff7dc; } tr.ship td { background: #eaf6ea; }
.badge { font-size: 15px; font-weight: 700; padding: 3px 12px; border-radius: 4px; display: inline-block; }
.passed { background: #d5f0d5; color: #145214; } .failed { background: #f8d0d0; color: #7a1010; }
.pill { font-size: 11px; padding: 1px 6px; border-radius: 8px; background: #eee; white-space: nowrap; }
.pill.ok { background: #d5f0d5; } .pill.bad { background: #f8d0d0; }
.note { color: #555; font-size: 13px; } .meta { color: #444; font-size: 14px; line-height: 1.5; }
.plots { display: flex; flex-wrap: wrap; gap: 12px; } .plot { border: 1px solid #e2e2e2; padding: 6px; }
.plot h4 { margin: 0 0 4px; font-size: 13px; font-weight: 600; }
svg text { font-family: system-ui, sans-serif; }
code, pre { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
pre { background: #f7f7f7; padding: 8px; overflow-x: auto; max-width: 1200px; }
details { margin: 6px 0; } summary { cursor: pointer; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: object, digits: int = 4) -> str:
    """Numbers for people: None as a dash, tiny/huge floats in scientific notation."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return esc(value)
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}" if abs(value) >= 1 else f"{value:.{digits}f}".rstrip("0").rstrip(".") or "0"
    if isinstance(value, int):
        return f"{value:,}"
    return esc(value)


def fmt_bytes(n: object) -> str:
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "—"
    if n < 1024:
        return f"{int(n)} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.2f} MiB"


def _num(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _variant_name(v: dict) -> str:
    return v.get("id") or f"{v.get('platform', '?')}/{v.get('quantization', '?')}"


def _table(headers: list[str], rows: list[str], numeric: set[int] | None = None) -> str:
    numeric = numeric or set()
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def _row(cells: list[str], cls: str = "", numeric_from: int = 99) -> str:
    tds = "".join(f"<td class='n'>{c}</td>" if i >= numeric_from else f"<td>{c}</td>" for i, c in enumerate(cells))
    return f"<tr class='{cls}'>{tds}</tr>" if cls else f"<tr>{tds}</tr>"


# --------------------------------------------------------------------------- SVG plots


def _svg_open(width: int, height: int, label: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(label)}">'
    )


def _nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    step = 10 ** math.floor(math.log10((hi - lo) / count))
    for mult in (1, 2, 2.5, 5, 10):
        if (hi - lo) / (step * mult) <= count:
            step *= mult
            break
    start = math.ceil(lo / step) * step
    ticks = []
    t = start
    while t <= hi + 1e-12 * max(1.0, abs(hi)):
        ticks.append(round(t, 10))
        t += step
    return ticks


def _log_ticks(lo: float, hi: float) -> list[float]:
    return [10.0**k for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def _tick_label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        exp = math.floor(math.log10(abs(value)))
        mant = value / 10**exp
        return f"1e{exp}" if abs(mant - 1) < 1e-9 else f"{mant:g}e{exp}"
    return f"{value:g}"


def size_accuracy_svg(report: dict) -> str:
    """Scatter: bundle size (x, log) against accuracy (or top-1 agreement without labels), one point per variant."""
    variants = [v for v in report.get("variants", []) if _num(v.get("size_bytes"))]
    metric, label = "accuracy", "accuracy on the validation labels"
    if not any(_num((v.get("parity") or {}).get("accuracy")) is not None for v in variants):
        metric, label = "top1_agreement", "top-1 agreement with the original"
    if not any(_num((v.get("parity") or {}).get(metric)) is not None for v in variants):
        metric, label = "cosine_min", "cosine similarity (min) with the original"
    points = [
        (v, float(v["size_bytes"]) / 1024, _num((v.get("parity") or {}).get(metric)))
        for v in variants
        if _num((v.get("parity") or {}).get(metric)) is not None
    ]
    if not points:
        return "<p class='note'>No variant has both a size and a measured accuracy/agreement.</p>"
    ref_metrics = (report.get("reference") or {}).get("metrics") or {}
    ref_value = _num(ref_metrics.get("accuracy")) if metric == "accuracy" else None
    if metric == "top1_agreement":
        ref_value = 1.0
    w, h, ml, mr, mt, mb = 700, 350, 64, 150, 14, 62
    pw, ph = w - ml - mr, h - mt - mb
    xs = [p[1] for p in points]
    ys = [p[2] for p in points] + ([ref_value] if ref_value is not None else [])
    x_lo, x_hi = min(xs) / 1.25, max(xs) * 1.25
    y_lo, y_hi = min(ys), max(ys)
    pad = max((y_hi - y_lo) * 0.15, 0.002)
    y_lo, y_hi = y_lo - pad, min(y_hi + pad, 1.0 + pad / 2) if metric != "cosine_min" else y_hi + pad

    def sx(x: float) -> float:
        return ml + pw * (math.log(x) - math.log(x_lo)) / (math.log(x_hi) - math.log(x_lo))

    def sy(y: float) -> float:
        return mt + ph * (1 - (y - y_lo) / (y_hi - y_lo))

    parts = [_svg_open(w, h, f"size vs {label}")]
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="#bbb"/>')
    dots = [(sx(x_val), sy(y_val)) for _, x_val, y_val in points]
    boxes: list[tuple[float, float, float, float]] = [(x - 6, y - 6, x + 6, y + 6) for x, y in dots]
    for t in _nice_ticks(y_lo, y_hi, 5):
        y = sy(t)
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{ml - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{t:.4g}</text>')
    xticks = [t for t in _size_ticks(x_lo, x_hi) if x_lo <= t <= x_hi]
    for t in xticks:
        x = sx(t)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{mt + ph + 15}" font-size="11" text-anchor="middle">{t:g}</text>')
    parts.append(
        f'<text x="{ml + pw / 2}" y="{mt + ph + 32}" font-size="12" text-anchor="middle">'
        "model size (KiB, log scale)</text>"
    )
    parts.append(
        f'<text transform="translate(14,{mt + ph / 2}) rotate(-90)" font-size="12" text-anchor="middle">'
        f"{esc(metric)}</text>"
    )
    if ref_value is not None:
        y = sy(ref_value)
        what = "original model" if metric == "accuracy" else "perfect agreement"
        parts.append(
            f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#888" stroke-dasharray="5,4"/>'
            f'<text x="{ml + 4}" y="{y - 4:.1f}" font-size="10.5" fill="#666">{what}</text>'
        )
        boxes.append((ml, y - 14, ml + 6.0 * len(what) + 4, y - 2))
    for v, x_val, y_val in sorted(points, key=lambda p: (p[1], p[2])):
        x, y = sx(x_val), sy(y_val)
        color = PLATFORM_COLORS.get(v.get("platform", ""), "#777")
        fill = color if v.get("passed") else "white"
        parts.append(
            f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5.5" fill="{fill}" stroke="{color}" stroke-width="2">'
            f"<title>{esc(_variant_name(v))}: {fmt_bytes(v.get('size_bytes'))}, {metric} {y_val:.4f}</title></circle>"
        )
        text = f"{_variant_name(v)}{'' if v.get('passed') else ' (failed)'}{' ★' if v.get('shipped') else ''}"
        tx, ty, anchor = _place_label(x, y, 6.3 * len(text), boxes, (ml, mt, ml + pw, mt + ph))
        if (anchor, ty) != ("start", y - 8):  # not in the usual spot: a leader line says whose label it is
            parts.append(
                f'<line x1="{x:.1f}" y1="{y:.1f}" x2="{tx:.1f}" y2="{ty - 4:.1f}" stroke="{color}" '
                'stroke-width="0.8" stroke-opacity="0.7"/>'
            )
        parts.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" font-size="11" fill="{color}" text-anchor="{anchor}">{esc(text)}</text>'
        )
    legend_y = h - 8
    items = [
        f'<circle cx="{ml + 5}" cy="{legend_y - 4}" r="5" fill="{PLATFORM_COLORS["android"]}"/>'
        f'<text x="{ml + 14}" y="{legend_y}" font-size="11">android</text>',
        f'<circle cx="{ml + 75}" cy="{legend_y - 4}" r="5" fill="{PLATFORM_COLORS["ios"]}"/>'
        f'<text x="{ml + 84}" y="{legend_y}" font-size="11">ios</text>',
        f'<circle cx="{ml + 125}" cy="{legend_y - 4}" r="5" fill="white" stroke="#777" stroke-width="2"/>'
        f'<text x="{ml + 134}" y="{legend_y}" font-size="11">failed gates (hollow)</text>',
        f'<text x="{ml + 265}" y="{legend_y}" font-size="11">★ shipped</text>',
    ]
    parts += items
    parts.append("</svg>")
    return "".join(parts)


def _place_label(
    x: float, y: float, width: float, boxes: list[tuple[float, float, float, float]], area: tuple[float, ...]
) -> tuple[float, float, str]:
    """A label position next to (x, y) that overlaps no dot or earlier label; records the label's box."""
    candidates = []
    for dy in (-8, 14, -22, 28, -36, 42, -50, 56):
        candidates += [(x + 8, y + dy, "start"), (x - 8, y + dy, "end")]
    for tx, ty, anchor in candidates:
        left = tx if anchor == "start" else tx - width
        box = (left, ty - 10, left + width, ty + 2)
        inside = area[0] <= box[0] and box[2] <= area[2] + 140 and area[1] <= box[1] and box[3] <= area[3]
        if inside and not any(b[0] < box[2] and box[0] < b[2] and b[1] < box[3] and box[1] < b[3] for b in boxes):
            boxes.append(box)
            return tx, ty, anchor
    return x + 8, y - 8, "start"


def _size_ticks(lo: float, hi: float) -> list[float]:
    ticks = []
    for decade in _log_ticks(lo, hi):
        ticks += [decade, 2 * decade, 5 * decade]
    return ticks if len([t for t in ticks if lo <= t <= hi]) >= 2 else _nice_ticks(lo, hi)


def _merged_histogram(parity: dict) -> tuple[list[float], list[int]] | None:
    edges, total = None, None
    for out in parity.get("outputs") or []:
        hist = out.get("abs_error_histogram")
        if not hist or not hist.get("counts"):
            continue
        counts = np.asarray(hist["counts"], dtype=np.int64)
        if total is None:
            edges, total = list(hist["edges"]), counts
        elif len(counts) == len(total):
            total = total + counts
    if total is None or edges is None:
        return None
    return edges, [int(c) for c in total]


def error_histograms_html(variants: list[dict]) -> str:
    """One small histogram per variant: fraction of output values per absolute-error decade."""
    cells = []
    for v in variants:
        merged = _merged_histogram(v.get("parity") or {})
        if merged is None:
            continue
        edges, counts = merged
        total = sum(counts) or 1
        w, h, ml, mb, mt = 330, 150, 34, 34, 8
        pw, ph = w - ml - 8, h - mb - mt
        n = len(counts)
        bw = pw / n
        parts = [_svg_open(w, h, f"absolute error histogram of {_variant_name(v)}")]
        parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" stroke="#999"/>')
        for frac in (0.5, 1.0):
            y = mt + ph * (1 - frac)
            parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{ml - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{frac:.0%}</text>')
        color = PLATFORM_COLORS.get(v.get("platform", ""), "#777")
        for i, c in enumerate(counts):
            bh = ph * c / total
            x = ml + i * bw
            lo = "0" if i == 0 else _tick_label(edges[i - 1])
            hi = "∞" if i == n - 1 else _tick_label(edges[i])
            parts.append(
                f'<rect x="{x + 1:.1f}" y="{mt + ph - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="{color}">'
                f"<title>|error| in [{lo}, {hi}): {c:,} values ({c / total:.1%})</title></rect>"
            )
        for i in range(0, n - 1, 2):
            x = ml + (i + 1) * bw
            parts.append(
                f'<text x="{x:.1f}" y="{mt + ph + 13}" font-size="9.5" text-anchor="middle">'
                f"{_tick_label(edges[i])}</text>"
            )
        parts.append(
            f'<text x="{ml + pw / 2}" y="{h - 4}" font-size="10.5" text-anchor="middle">absolute error (decades)</text>'
        )
        parts.append("</svg>")
        p = v.get("parity") or {}
        cells.append(
            f"<div class='plot'><h4>{esc(_variant_name(v))} <span class='note'>max {fmt(p.get('max_abs_error'), 3)}, "
            f"mean {fmt(p.get('mean_abs_error'), 3)}</span></h4>{''.join(parts)}</div>"
        )
    if not cells:
        return "<p class='note'>No variant produced outputs to compare.</p>"
    return f"<div class='plots'>{''.join(cells)}</div>"


def _latency_rows(report: dict) -> list[tuple[str, str, dict]]:
    rows = []
    ref = report.get("reference") or {}
    for lat in ref.get("latency_by_threads") or ([ref["latency"]] if ref.get("latency") else []):
        rows.append(("original (torch)", "original", lat))
    for v in report.get("variants", []):
        lats = v.get("latency_by_threads") or ([v["latency"]] if v.get("latency") else [])
        for lat in lats:
            rows.append((_variant_name(v), v.get("platform", ""), lat))
    return [(n, p, lat) for n, p, lat in rows if isinstance(lat, dict) and _num(lat.get("p50_ms")) is not None]


def latency_svg(report: dict) -> str:
    """Per model and thread count: every timed run as a dot, p10-p90 box, median tick (log ms axis)."""
    rows = _latency_rows(report)
    if not rows:
        return "<p class='note'>No latency measured.</p>"
    samples = []
    for _, _, lat in rows:
        s = [x for x in (lat.get("samples_ms") or []) if _num(x) is not None and x > 0]
        samples.append(np.asarray(s or [lat["p50_ms"]], dtype=np.float64))
    lo = max(min(float(s.min()) for s in samples) / 1.3, 1e-4)
    hi = max(float(s.max()) for s in samples) * 1.3
    if hi / lo < 10:
        mid = math.sqrt(hi * lo)
        lo, hi = mid / 4, mid * 4
    w, ml, mr, rh, mt = 900, 230, 120, 24, 10
    pw = w - ml - mr
    h = mt + rh * len(rows) + 40

    def sx(x: float) -> float:
        return ml + pw * (math.log(max(x, lo)) - math.log(lo)) / (math.log(hi) - math.log(lo))

    parts = [_svg_open(w, h, "latency distribution per variant and thread count")]
    for t in _log_ticks(lo, hi):
        for m in (1, 2, 5):
            v = t * m
            if lo <= v <= hi:
                x = sx(v)
                parts.append(
                    f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + rh * len(rows)}" '
                    f'stroke="{"#ddd" if m == 1 else "#f2f2f2"}"/>'
                )
                if m == 1 or hi / lo < 1000:
                    parts.append(
                        f'<text x="{x:.1f}" y="{mt + rh * len(rows) + 14}" font-size="10.5" '
                        f'text-anchor="middle">{_tick_label(v)}</text>'
                    )
    parts.append(
        f'<text x="{ml + pw / 2}" y="{h - 6}" font-size="12" text-anchor="middle">'
        "milliseconds per call (log scale)</text>"
    )
    for i, ((name, platform, lat), s) in enumerate(zip(rows, samples, strict=True)):
        y = mt + rh * i + rh / 2
        color = PLATFORM_COLORS.get(platform, "#777")
        threads = lat.get("threads")
        if i % 2:
            parts.append(f'<rect x="0" y="{y - rh / 2:.1f}" width="{w}" height="{rh}" fill="#fafafa"/>')
        parts.append(
            f'<text x="{ml - 8}" y="{y + 4:.1f}" font-size="11.5" text-anchor="end">{esc(name)}'
            f"{f' · {threads} thr' if threads is not None else ''}</text>"
        )
        p10, p50, p90 = (float(np.percentile(s, q)) for q in (10, 50, 90))
        parts.append(
            f'<line x1="{sx(float(s.min())):.1f}" x2="{sx(float(s.max())):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{color}" stroke-opacity="0.6"/>'
        )
        parts.append(
            f'<rect x="{sx(p10):.1f}" y="{y - 7:.1f}" width="{max(sx(p90) - sx(p10), 1.5):.1f}" height="14" '
            f'fill="{color}" fill-opacity="0.18" stroke="{color}"/>'
        )
        for j, val in enumerate(s[:200]):
            jitter = ((j * 7919) % 11 - 5) * 0.9
            parts.append(
                f'<circle cx="{sx(float(val)):.1f}" cy="{y + jitter:.1f}" r="1.6" fill="{color}" fill-opacity="0.45"/>'
            )
        parts.append(
            f'<line x1="{sx(p50):.1f}" x2="{sx(p50):.1f}" y1="{y - 8:.1f}" y2="{y + 8:.1f}" stroke="#111" '
            f'stroke-width="2"><title>{esc(name)}: p50 {lat.get("p50_ms"):.4g} ms</title></line>'
        )
        parts.append(
            f'<text x="{ml + pw + 8}" y="{y + 4:.1f}" font-size="11">p50 {fmt(_num(lat.get("p50_ms")), 3)} ms</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------- tables


def _gate_summary(v: dict) -> str:
    gates = v.get("gates") or []
    failed = [g for g in gates if not g.get("passed")]
    if not gates:
        return "<span class='pill bad'>no gates</span>"
    if not failed:
        return f"<span class='pill ok'>{len(gates)} passed</span>"
    return "<br>".join(esc(g.get("message", g.get("metric", "?"))) for g in failed)


def variants_table(report: dict) -> str:
    rows = []
    for v in report.get("variants", []):
        cls = "bad" if not v.get("passed") else ("ship" if v.get("shipped") else "")
        rows.append(
            _row(
                [
                    f"<b>{esc(_variant_name(v))}</b>",
                    esc(v.get("target", "—")),
                    fmt_bytes(v.get("size_bytes")),
                    esc(v.get("backend") or "—"),
                    esc(v.get("status", "—")),
                    _gate_summary(v),
                    "✔ shipped" if v.get("shipped") else "",
                ],
                cls,
            )
        )
    return _table(["variant", "format", "size", "backend", "status", "gates", ""], rows)


def parity_table(report: dict) -> str:
    rows = []
    for v in report.get("variants", []):
        p = v.get("parity")
        if not p:
            continue
        outputs = p.get("outputs") or [{"name": "(all)", **p}]
        for k, out in enumerate(outputs):
            first = k == 0
            rows.append(
                _row(
                    [
                        f"<b>{esc(_variant_name(v))}</b>" if first else "",
                        esc(out.get("name", "")),
                        fmt(out.get("max_abs_error"), 3),
                        fmt(out.get("mean_abs_error"), 3),
                        fmt(out.get("max_rel_error"), 3),
                        fmt(out.get("mean_rel_error"), 3),
                        fmt(out.get("cosine_min"), 6),
                        fmt(out.get("cosine_mean"), 6),
                        fmt(out.get("snr_db"), 4),
                        fmt(p.get("top1_agreement")) if first else "",
                        fmt(p.get("top5_agreement")) if first else "",
                    ],
                    numeric_from=2,
                )
            )
    if not rows:
        return "<p class='note'>No variant could be compared with the original.</p>"
    return _table(
        [
            "variant", "output", "max |err|", "mean |err|", "max rel err", "mean rel err", "cosine min",
            "cosine mean", "SNR dB", "top-1 agree", "top-5 agree",
        ],
        rows,
    )  # fmt: skip


_CLASSIFICATION_COLUMNS = [
    ("accuracy", "accuracy"),
    ("accuracy_drop", "Δ accuracy"),
    ("precision", "precision"),
    ("recall", "recall"),
    ("f1", "F1 (macro)"),
    ("f1_drop", "Δ F1"),
]
_REGRESSION_COLUMNS = [("mae", "MAE"), ("mae_increase", "Δ MAE"), ("rmse", "RMSE"), ("rmse_increase", "Δ RMSE")]


def task_table(report: dict) -> str:
    ref_metrics = (report.get("reference") or {}).get("metrics") or {}
    variants = [v for v in report.get("variants", []) if v.get("parity")]

    def measured(key: str) -> bool:
        return _num(ref_metrics.get(key)) is not None or any(_num(v["parity"].get(key)) is not None for v in variants)

    if measured("accuracy"):
        columns = _CLASSIFICATION_COLUMNS
    elif measured("mae"):
        columns = _REGRESSION_COLUMNS
    else:
        return "<p class='note'>No labels in the validation data: agreement with the original is what is measured.</p>"
    extra = "accuracy_drop_vs_original" if any("accuracy_drop_vs_original" in v["parity"] for v in variants) else None
    headers = ["model"] + [label for _, label in columns] + (["Δ accuracy vs unpruned"] if extra else [])
    rows = [
        _row(
            ["<b>original (torch)</b>"] + [fmt(ref_metrics.get(k)) for k, _ in columns] + (["—"] if extra else []),
            numeric_from=1,
        )
    ]
    for v in variants:
        p = v["parity"]
        cells = [f"<b>{esc(_variant_name(v))}</b>"] + [fmt(p.get(k)) for k, _ in columns]
        if extra:
            cells.append(fmt(p.get(extra)))
        rows.append(_row(cells, "" if v.get("passed") else "bad", numeric_from=1))
    note = "<p class='note'>Δ = original − variant for accuracy and F1 (positive: the variant lost), "
    note += "variant − original for MAE/RMSE.</p>"
    return _table(headers, rows) + note


# Per task: the metrics of the variant against the original (and labels) the task table shows.
_AGREEMENT_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "detection": [
        ("map50_agreement", "mAP@0.5 vs original"), ("matched_iou_mean", "matched IoU mean"),
        ("matched_iou_min", "matched IoU min"), ("score_error_mean", "score err mean"),
        ("score_error_max", "score err max"), ("matched_recall", "matched recall"),
        ("matched_precision", "matched precision"), ("detections", "detections"), ("map50", "mAP@0.5 (labels)"),
        ("map50_drop", "Δ mAP@0.5"),
    ],
    "segmentation": [
        ("pixel_agreement", "pixel agreement"), ("miou_agreement", "mIoU vs original"),
        ("pixel_accuracy", "pixel accuracy (labels)"), ("miou", "mIoU (labels)"), ("miou_drop", "Δ mIoU"),
    ],
    "embedding": [("cosine_min", "cosine min"), ("cosine_mean", "cosine mean"), ("recall_at_k", "recall@k")],
}  # fmt: skip


def agreement_table(report: dict) -> str:
    """The task's own metrics against the original (detection, segmentation, embedding); empty for others."""
    task = (report.get("recipe") or {}).get("task", "")
    columns = _AGREEMENT_COLUMNS.get(task)
    variants = [v for v in report.get("variants", []) if v.get("parity")]
    if not columns or not variants:
        return ""
    rows = [
        _row(
            [f"<b>{esc(_variant_name(v))}</b>"] + [fmt(v["parity"].get(k)) for k, _ in columns],
            "" if v.get("passed") else "bad",
            numeric_from=1,
        )
        for v in variants
    ]
    ref = (report.get("reference") or {}).get("metrics") or {}
    extra = ""
    if task == "embedding":
        k = next((v["parity"].get("recall_k") for v in variants if v["parity"].get("recall_k")), None)
        extra = f" recall@k with k = {fmt(k)}: the share of the original's k nearest samples the variant also finds."
    if ref:
        extra += " Original against the labels: " + ", ".join(f"{esc(k)} {fmt(v)}" for k, v in ref.items()) + "."
    return _table(["variant"] + [label for _, label in columns], rows) + f"<p class='note'>{esc(task)}.{extra}</p>"


def streaming_svg(report: dict) -> str:
    """Streaming models: the worst absolute error over the outputs at every step, one line per variant (log y)."""
    lines = [(v, (v.get("parity") or {}).get("streaming")) for v in report.get("variants", [])]
    lines = [(v, s) for v, s in lines if isinstance(s, dict) and s.get("per_step")]
    if not lines:
        return ""
    steps = max(len(s["per_step"]) for _, s in lines)
    values = [max(float(p.get("max_abs_error") or 0), 1e-9) for _, s in lines for p in s["per_step"]]
    lo, hi = min(values) / 2, max(values) * 2
    w, h, ml, mr, mt, mb = 760, 260, 60, 190, 10, 40
    pw, ph = w - ml - mr, h - mt - mb

    def sx(t: float) -> float:
        return ml + pw * (t / max(steps - 1, 1))

    def sy(y: float) -> float:
        return mt + ph * (1 - (math.log10(max(y, 1e-9)) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))

    parts = [_svg_open(w, h, "worst absolute error per step, each model on its own state")]
    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="#fcfcfc" stroke="#bbb"/>')
    for t in _log_ticks(lo, hi):
        if lo <= t <= hi:
            parts.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#eee"/>')
            parts.append(
                f'<text x="{ml - 6}" y="{sy(t) + 4:.1f}" font-size="10.5" text-anchor="end">{_tick_label(t)}</text>'
            )
    parts.append(
        f'<text x="{ml + pw / 2}" y="{h - 8}" font-size="12" text-anchor="middle">step (0 to {steps - 1})</text>'
    )
    for i, (v, s) in enumerate(lines):
        color = PLATFORM_COLORS.get(v.get("platform", ""), "#777")
        dash = "" if i % 2 == 0 else ' stroke-dasharray="5,3"'
        points = " ".join(f"{sx(p['step']):.1f},{sy(float(p.get('max_abs_error') or 0)):.1f}" for p in s["per_step"])
        parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="1.5"{dash}>'
                     f"<title>{esc(_variant_name(v))}</title></polyline>")  # fmt: skip
        y = mt + 12 + 14 * i
        parts.append(
            f'<line x1="{ml + pw + 10}" x2="{ml + pw + 30}" y1="{y - 4}" y2="{y - 4}" stroke="{color}"{dash}/>'
        )
        parts.append(f'<text x="{ml + pw + 34}" y="{y}" font-size="11">{esc(_variant_name(v))}</text>')
    parts.append("</svg>")
    return "".join(parts)


def delegation_html(report: dict) -> str:
    """Per TFLite variant: XNNPACK partitions, how many ops run in XNNPACK or on LiteRT's reference kernels (by
    op kind), and per op (in a collapsed table)."""
    variants = [v for v in report.get("variants", []) if isinstance(v.get("delegation"), dict)]
    if not variants:
        return "<p class='note'>No variant's runtime lists its delegated ops.</p>"
    rows, details = [], []
    for v in variants:
        d = v["delegation"]
        slow = {op: c["reference"] for op, c in (d.get("by_op") or {}).items() if c.get("reference")}
        listed = ", ".join(f"{esc(op)} ×{n}" for op, n in sorted(slow.items())) or "—"
        cls = "warn" if slow or d.get("partitions", 1) != 1 else ""
        rows.append(
            _row(
                [f"<b>{esc(_variant_name(v))}</b>", fmt(d.get("partitions")), fmt(d.get("delegated_ops")),
                 fmt(d.get("reference_ops")), listed],
                cls,
                numeric_from=1,
            )
        )  # fmt: skip
        per_op = [
            _row([fmt(op.get("index")), esc(op.get("op")), esc(op.get("kernel")), fmt(op.get("partition")),
                  f"<code>{esc(op.get('tensor', ''))}</code>"], "" if op.get("kernel") == "XNNPACK" else "warn")
            for op in d.get("per_op") or []
        ]  # fmt: skip
        details.append(
            f"<details><summary>{esc(_variant_name(v))}: every op</summary>"
            + _table(["#", "op", "kernel", "partition", "output tensor"], per_op)
            + "</details>"
        )
    head = ["variant", "XNNPACK partitions", "ops in XNNPACK", "ops on reference kernels", "reference-kernel ops"]
    note = (
        "<p class='note'>Ops XNNPACK has no kernel for (in their precision) run on LiteRT's reference kernels; each "
        "one splits the graph into another partition, with a copy at both ends.</p>"
    )
    return _table(head, rows) + note + "".join(details)


def latency_table(report: dict) -> str:
    rows = []
    for name, _, lat in _latency_rows(report):
        rows.append(
            _row(
                [
                    esc(name),
                    fmt(lat.get("threads")),
                    fmt(_num(lat.get("p50_ms")), 3),
                    fmt(_num(lat.get("p90_ms")), 3),
                    fmt(_num(lat.get("p99_ms")), 3),
                    fmt(_num(lat.get("mean_ms")), 3),
                    fmt(_num(lat.get("std_ms")), 3),
                    _rate(_num(lat.get("throughput_per_s"))),
                    fmt(_num(lat.get("load_ms")), 3),
                    fmt_bytes(lat.get("peak_memory_bytes")),
                    f"{fmt(lat.get('warmup'))} + {fmt(lat.get('runs'))}",
                ],
                numeric_from=1,
            )
        )
    if not rows:
        return ""
    methods = sorted({str(lat.get("memory_method")) for _, _, lat in _latency_rows(report) if lat.get("memory_method")})
    note = ""
    if methods:
        note = (
            "<p class='note'>Peak memory: growth of resident memory while loading and running "
            f"({esc(', '.join(methods))}; see docs/validation.md).</p>"
        )
    return (
        _table(
            [
                "model", "threads", "p50 ms", "p90 ms", "p99 ms", "mean ms", "std ms", "samples/s", "load ms",
                "peak memory", "warm-up + runs",
            ],
            rows,
        )
        + note
    )  # fmt: skip


def _rate(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def gates_details(report: dict) -> str:
    parts = []
    for v in report.get("variants", []):
        gates = v.get("gates") or []
        rows = [
            _row(
                [
                    esc(g.get("metric", "?")),
                    fmt(g.get("value")),
                    ("≤ " if g.get("direction") == "max" else "≥ ") + fmt(g.get("limit")),
                    esc(g.get("source", "")),
                    "<span class='pill ok'>pass</span>" if g.get("passed") else "<span class='pill bad'>FAIL</span>",
                    esc(g.get("message", "")),
                ],
                "" if g.get("passed") else "bad",
            )
            for g in gates
        ]
        failed = sum(1 for g in gates if not g.get("passed"))
        summary = f"{esc(_variant_name(v))}: {len(gates) - failed}/{len(gates)} gates passed"
        notes = "".join(f"<li>{esc(n)}</li>" for n in v.get("notes") or [])
        extra = {k: val for k, val in v.items() if k not in _KNOWN_VARIANT}
        body = _table(["metric", "value", "limit", "source", "", "message"], rows) if rows else ""
        skipped = v.get("gates_not_applied") or []
        if skipped:
            items = "".join(
                f"<li><b>{esc(g.get('metric'))}</b> (limit {fmt(g.get('limit'))}, {esc(g.get('source', ''))}): "
                f"{esc(g.get('reason', ''))}</li>"
                for g in skipped
            )
            why = "Not applied: the metric cannot tell good from bad for this model."
            body += f"<p class='note'>{why}</p><ul class='note'>{items}</ul>"
        if notes:
            body += f"<p class='note'>Notes:</p><ul class='note'>{notes}</ul>"
        if extra:
            body += f"<pre>{esc(json.dumps(extra, indent=2, default=str))}</pre>"
        is_open = " open" if failed or not v.get("passed") else ""
        parts.append(f"<details{is_open}><summary>{summary}</summary>{body}</details>")
    return "".join(parts)


def data_checks_table(report: dict) -> str:
    checks = report.get("data_checks") or []
    if not checks:
        return "<p class='note'>No data checks recorded.</p>"
    rows = [
        _row(
            [
                esc(c.get("name", "?")),
                "<span class='pill ok'>ok</span>" if c.get("passed") else "<span class='pill bad'>warning</span>",
                esc(c.get("detail", "")),
            ],
            "" if c.get("passed") else "warn",
        )
        for c in checks
    ]
    return _table(["check", "result", "found"], rows)


def _kv_table(data: dict) -> str:
    rows = []
    for k, v in data.items():
        value = fmt(v) if not isinstance(v, (dict, list)) else f"<pre>{esc(json.dumps(v, indent=2, default=str))}</pre>"
        rows.append(_row([esc(k), value]))
    return _table(["key", "value"], rows)


# --------------------------------------------------------------------------- page


_BASELINE_METRICS = ("accuracy", "f1", "top1_agreement", "cosine_min")


def baseline_table(baselines: dict) -> str:
    """Per platform: the shipped model next to the release it replaces (`mobex build --baseline`), and the
    [release] budgets."""
    parts = []
    for platform, c in baselines.items():
        if not isinstance(c, dict):
            continue
        old, new = c.get("previous") or {}, c.get("new") or {}
        om, nm = old.get("metrics") or {}, new.get("metrics") or {}
        lat = c.get("latency") or {}
        rows = [
            _row(["version", esc(old.get("version")), esc(new.get("version")), ""]),
            _row(["variant", esc(old.get("quantization")), esc(new.get("quantization")), ""]),
            _row(["model bytes", fmt_bytes(old.get("size_bytes")), fmt_bytes(new.get("size_bytes")),
                  "" if c.get("size_growth") is None else f"{c['size_growth']:+.1%}"], numeric_from=1),
            _row(["p50 ms (interleaved)", fmt(lat.get("previous_p50_ms")), fmt(lat.get("new_p50_ms")),
                  "" if lat.get("ratio") is None else f"x{lat['ratio']:.3f}"], numeric_from=1),
        ]  # fmt: skip
        rows += [_row([esc(m), fmt(om.get(m)), fmt(nm.get(m)), ""], numeric_from=1) for m in _BASELINE_METRICS
                 if m in om or m in nm]  # fmt: skip
        agreement = ", ".join(f"{esc(k)} {fmt(v)}" for k, v in (c.get("agreement") or {}).items()) or "not compared"
        budgets = "".join(
            f"<li class='{'ok' if b.get('passed') else 'bad'}'>{esc(b.get('message'))}</li>"
            for b in c.get("budgets") or []
        )
        notes = "".join(f"<li>{esc(n)}</li>" for n in c.get("notes") or [])
        parts += [
            f"<h3>{esc(platform)}: against {esc(old.get('source', ''))}</h3>",
            _table(["", "previous", "new", "change"], rows),
            f"<p>New outputs against the previous model's on the validation data: {agreement}.</p>",
            f"<ul>{budgets}{notes}</ul>" if budgets or notes else "<p>No [release] budgets set.</p>",
        ]
    return "\n".join(parts)


def render_html(report: dict) -> str:
    """The whole page from the report dict."""
    recipe = report.get("recipe") or {}
    status = report.get("status", "unknown")
    ok = status == "passed"
    name = f"{recipe.get('name', '?')} {recipe.get('version', '')}".strip()
    failures = "".join(f"<li>{esc(f)}</li>" for f in report.get("failures") or [])
    rejected = "".join(f"<li>{esc(f)}</li>" for f in report.get("rejected_variants") or [])
    shipped = ", ".join(f"{esc(p)}: <b>{esc(q)}</b>" for p, q in (report.get("shipped") or {}).items()) or "nothing"
    bundles = ", ".join(
        f"<code>{esc(b.get('file'))}</code> ({fmt_bytes(b.get('size_bytes'))})" for b in report.get("bundles") or []
    )
    data = report.get("data") or {}
    data_line = "; ".join(
        f"{esc(role)}: {fmt(d.get('samples'))} samples (<code>{esc(d.get('path', ''))}</code>)"
        for role, d in data.items()
        if isinstance(d, dict)
    )
    ref = report.get("reference") or {}
    ref_metrics = ", ".join(f"{esc(k)} {fmt(v)}" for k, v in (ref.get("metrics") or {}).items()) or "no labels"
    sections = [
        f"<h1>{esc(name)}</h1>",
        f"<p><span class='badge {'passed' if ok else 'failed'}'>{'PASSED' if ok else esc(status.upper())}</span>"
        f" &nbsp; shipped — {shipped}</p>",
        "<p class='meta'>"
        f"Recipe <code>{esc(recipe.get('path', ''))}</code> (sha256 {esc(str(recipe.get('sha256', ''))[:16])}…), "
        f"task <b>{esc(recipe.get('task', '?'))}</b>.<br>Data — {data_line or '—'}.<br>"
        f"Original model ({esc(ref.get('backend', 'torch'))}"
        f"{', ' + esc(ref['model']) if ref.get('model') else ''}): {ref_metrics}."
        + (f"<br>Bundles: {bundles}." if bundles else "")
        + "</p>",
    ]
    if failures:
        sections.append(f"<h2>Failures</h2><ul>{failures}</ul>")
    if rejected:
        sections.append(f"<h2>Rejected variants</h2><ul>{rejected}</ul>")
    sections += [
        "<h2>Variants</h2>",
        variants_table(report),
        "<h2>Size and accuracy</h2>",
        size_accuracy_svg(report),
        "<h2>Parity with the original model</h2>",
        "<p class='note'>Over the whole validation split, per output. Relative errors divide by |original|, "
        "floored at 0.1% of the output's RMS.</p>",
        parity_table(report),
        "<h3>Absolute error histograms</h3>",
        error_histograms_html(report.get("variants", [])),
        "<h2>Task metrics</h2>",
        agreement_table(report),
        task_table(report),
        *(["<h3>Streaming: parity per step</h3>", streaming_svg(report)] if streaming_svg(report) else []),
        "<h2>Delegation</h2>",
        delegation_html(report),
        "<h2>Latency</h2>",
        f"<p class='note'>{esc(_capitalized(report.get('latency_note', '')))}. "
        + esc(_host(report))
        + " Core ML variants have no latency off macOS (the reference interpreter is not the Core ML runtime).</p>",
        latency_svg(report),
        latency_table(report),
        "<h2>Gates</h2>",
        gates_details(report),
        "<h2>Data checks</h2>",
        data_checks_table(report),
    ]
    if isinstance(report.get("baseline"), dict) and report["baseline"]:
        sections += ["<h2>Previous release</h2>", baseline_table(report["baseline"])]
    if isinstance(report.get("pruning"), dict):
        sections += ["<h2>Pruning</h2>", _kv_table(report["pruning"])]
    extra = {k: v for k, v in report.items() if k not in _KNOWN_TOP_LEVEL}
    if extra:
        sections += ["<h2>Other</h2>", _kv_table(extra)]
    timings = report.get("timings") or {}
    if timings:
        sections += [
            "<h2>Wall time per stage</h2>",
            _table(["stage", "seconds"], [_row([esc(k), fmt(_num(v), 3)], numeric_from=1) for k, v in timings.items()]),
        ]
    if report.get("provenance"):
        sections.append(
            f"<details><summary>Provenance</summary><pre>{esc(json.dumps(report['provenance'], indent=2))}</pre>"
            "</details>"
        )
    sections.append(
        f"<p class='note'>mobex {esc(report.get('mobex_version', '?'))}; generated from report.json "
        f"(schema <code>{esc(report.get('schema', '?'))}</code>).</p>"
    )
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>mobex report: {esc(name)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(sections)
        + "\n</body></html>\n"
    )


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _host(report: dict) -> str:
    for _, _, lat in _latency_rows(report):
        if lat.get("host"):
            return f"Host: {lat['host']}."
    return ""
