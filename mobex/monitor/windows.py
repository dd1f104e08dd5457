"""Group prediction records by time window (aligned to the Unix epoch, in UTC) and by segment:
all records, each app version, each device model."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from mobex.errors import UsageError
from mobex.monitor.record import PredictionRecord
from mobex.registry.pointer import parse_duration

MAX_WINDOWS = 10_000


@dataclass(frozen=True, order=True)
class Segment:
    kind: str  # "all" | "app_version" | "device_model"
    value: str = ""

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}={self.value}"


ALL = Segment("all")


@dataclass(frozen=True, order=True)
class GroupKey:
    start: datetime
    segment: Segment


def parse_window(text: str) -> timedelta:
    """'1h', '30m', '1d', '90s' (as for `mobex publish --expires`)."""
    return parse_duration(text)


def window_start(ts: datetime, window: timedelta) -> datetime:
    seconds = int(window.total_seconds())
    epoch = int(ts.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


def group_records(records: list[PredictionRecord], window: timedelta) -> dict[GroupKey, list[PredictionRecord]]:
    """Records per (window start, segment); each record is in ALL and in its app-version and device segments."""
    groups: dict[GroupKey, list[PredictionRecord]] = defaultdict(list)
    for r in records:
        start = window_start(r.timestamp, window)
        for segment in (ALL, Segment("app_version", r.app_version), Segment("device_model", r.device_model)):
            groups[GroupKey(start, segment)].append(r)
    starts = {k.start for k in groups}
    if len(starts) > MAX_WINDOWS:
        hint = "use a longer --window"
        raise UsageError(f"the telemetry spans {len(starts)} windows (at most {MAX_WINDOWS})", hint=hint)
    return dict(sorted(groups.items()))
