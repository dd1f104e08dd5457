"""`mobex monitor`: read telemetry, group it, measure each group, compare with the build, name what crossed.

The report (`--json`, and `--html`) holds the thresholds, the build's validated numbers, how many
lines were read / used / unusable (by reason, with the first few places), one entry per (window,
segment) and the alerts. Exit code 6 (as `mobex drift`) when any alert is raised.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from mobex.errors import DRIFT_EXIT_CODE
from mobex.monitor.baseline import Baseline, load_baseline
from mobex.monitor.evaluate import GroupMetrics, drift_rows, latency_metrics, task_metrics
from mobex.monitor.record import PredictionRecord, TelemetryLog, read_telemetry
from mobex.monitor.thresholds import Thresholds, check_group
from mobex.monitor.windows import ALL, GroupKey, group_records, parse_window
from mobex.validate.drift import json_safe  # NaN/inf -> None, as `mobex drift --json` writes

_ISO = "%Y-%m-%dT%H:%M:%SZ"


@dataclass
class MonitorReport:
    bundle: str
    telemetry: str
    verification: str
    model: dict
    window: str
    thresholds: dict
    validated: dict
    records: dict
    groups: list[GroupMetrics]
    alerts: list[dict]
    notes: list[str] = field(default_factory=list)

    @property
    def crossed(self) -> bool:
        return bool(self.alerts)

    @property
    def exit_code(self) -> int:
        return DRIFT_EXIT_CODE if self.crossed else 0

    def to_dict(self) -> dict:
        out = asdict(self)
        out["groups"] = [g.to_dict() for g in self.groups]
        out["crossed"] = self.crossed
        out["exit_code"] = self.exit_code
        return json_safe(out)


def _measure(key: GroupKey, records: list[PredictionRecord], log: TelemetryLog, baseline: Baseline,
             window: timedelta, t: Thresholds) -> GroupMetrics:  # fmt: skip
    g = GroupMetrics(
        window_start=key.start.strftime(_ISO), window_end=(key.start + window).strftime(_ISO),
        segment=str(key.segment), predictions=len(records),
    )  # fmt: skip
    measured = {**task_metrics(records, log, baseline), **latency_metrics(records, window.total_seconds())}
    for name, value in measured.items():
        setattr(g, name, value)
    g.drift, g.ks_p_per_test = drift_rows(records, baseline, psi_threshold=t.psi, ks_p=t.ks_p)
    psis = [f.psi for f in g.drift if f.psi is not None and math.isfinite(f.psi)]
    g.max_psi = max(psis) if psis else None
    g.drifted_features = [f.name for f in g.drift if f.drifted]
    g.alerts = check_group(g, baseline, t)
    return g


def _split(log: TelemetryLog, baseline: Baseline) -> tuple[list[PredictionRecord], dict[str, int]]:
    """The records of this bundle's model and version; how many were of another model or version."""
    m = baseline.manifest
    used, counts = [], {"other_model": 0, "other_version": 0}
    for r in log.predictions:
        if r.model.name != m.name:
            counts["other_model"] += 1
        elif r.model.version != m.version:
            counts["other_version"] += 1
        else:
            used.append(r)
    return used, counts


def run_monitor(
    bundle: Path, telemetry: Path, thresholds: Thresholds, *, key: Path | None = None, build_report: Path | None = None
) -> MonitorReport:
    window = parse_window(thresholds.window)
    baseline = load_baseline(bundle, key, build_report)
    log = read_telemetry(telemetry)
    used, skipped = _split(log, baseline)
    groups = [_measure(k, recs, log, baseline, window, thresholds) for k, recs in group_records(used, window).items()]
    notes = []
    if not used:
        notes.append(f"no telemetry of {baseline.manifest.name} {baseline.manifest.version} in {telemetry}")
    if baseline.reference is None:
        notes.append("the bundle has no reference statistics: drift is not checked")
    if baseline.latency is None:
        notes.append("no build latency to compare with (" + baseline.latency_source + ")")
    unlabelled = sum(1 for r in used if log.label_for(r) is None)
    m = baseline.manifest
    return MonitorReport(
        bundle=str(bundle), telemetry=str(telemetry), verification=baseline.verification,
        model={"name": m.name, "version": m.version, "platform": m.platform, "task": m.task},
        window=thresholds.window, thresholds=thresholds.model_dump(),
        validated={"metrics": baseline.metrics, "latency": baseline.latency, "latency_source": baseline.latency_source},
        records={
            "files": len(log.files), "lines": log.lines, "predictions": len(log.predictions), "used": len(used),
            "late_labels": len(log.labels), "unlabelled": unlabelled, **skipped,
            "malformed": log.malformed_total, "malformed_by_reason": dict(log.malformed.most_common()),
            "malformed_examples": log.examples,
        },
        groups=groups, alerts=[a for g in groups for a in g.alerts], notes=notes,
    )  # fmt: skip


def all_segment(report: MonitorReport) -> list[GroupMetrics]:
    """The 'all' groups in time order (what the plots draw)."""
    return [g for g in report.groups if g.segment == str(ALL)]
