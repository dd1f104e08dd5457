"""The telemetry record (JSON Lines, one record per line), and a reader that counts what it cannot use.

Two kinds of line (docs/monitoring.md has the field table):
- a prediction: when, which app version and device, which model (name, version, sha256), how long
  it took, what it predicted, a summary of its input, and optionally the ground-truth label;
- a label arriving later: `{"kind": "label", "id": <the prediction's id>, "label": ...}`.

Reading is bounded and never raises on data: a line longer than MAX_LINE_BYTES, invalid JSON or a
record that does not match the schema is counted by reason (with the first few places), and the
run goes on. Unknown fields are ignored, so newer apps can add fields without breaking older mobex.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mobex.errors import UsageError

TELEMETRY_SCHEMA = "https://mobex.dev/schemas/telemetry/v1"
MAX_LINE_BYTES = 1 << 20
MAX_FEATURES = 4096
MAX_FILES = 10_000
MAX_EXAMPLES = 10
TELEMETRY_SUFFIXES = (".jsonl", ".ndjson")

ShortText = Annotated[str, Field(min_length=1, max_length=128)]
Finite = Annotated[float, Field(allow_inf_nan=False)]


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)


class ModelRef(_Record):
    name: ShortText
    version: ShortText
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class PredictionSummary(_Record):
    """A classifier's predicted class (index), label and top-1 probability; any model's output features."""

    class_: int | None = Field(default=None, alias="class", ge=0)
    label: str | None = Field(default=None, max_length=256)
    score: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] | None = None
    features: dict[str, Finite] | None = Field(default=None, max_length=MAX_FEATURES)


class InputSummary(_Record):
    """Per-sample input features named as in the bundle's reference statistics, and/or a sampled input."""

    features: dict[str, Finite] | None = Field(default=None, max_length=MAX_FEATURES)
    sample: dict[str, Any] | None = None


def _timestamp(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("timestamp must be an RFC 3339 string such as 2026-01-31T12:00:00.250Z")
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("timestamp has no time zone; end it in Z (UTC) or +hh:mm")
    return parsed


class PredictionRecord(_Record):
    schema_: Literal["https://mobex.dev/schemas/telemetry/v1"] = Field(alias="schema")
    kind: Literal["prediction"] = "prediction"
    id: str | None = Field(default=None, max_length=128)
    timestamp: datetime
    app_version: ShortText
    device_model: ShortText
    model: ModelRef
    latency_ms: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    prediction: PredictionSummary
    input: InputSummary | None = None
    label: int | str | None = None

    @field_validator("timestamp", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> datetime:
        return _timestamp(value)


class LabelRecord(_Record):
    schema_: Literal["https://mobex.dev/schemas/telemetry/v1"] = Field(alias="schema")
    kind: Literal["label"]
    id: Annotated[str, Field(min_length=1, max_length=128)]
    timestamp: datetime
    label: int | str

    @field_validator("timestamp", mode="before")
    @classmethod
    def _ts(cls, value: Any) -> datetime:
        return _timestamp(value)


@dataclass
class TelemetryLog:
    """What a telemetry file or folder held: predictions, late labels, and the lines that were unusable."""

    predictions: list[PredictionRecord] = field(default_factory=list)
    labels: dict[str, int | str] = field(default_factory=dict)
    lines: int = 0
    malformed: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)

    @property
    def malformed_total(self) -> int:
        return sum(self.malformed.values())

    def refuse(self, where: str, reason: str) -> None:
        self.malformed[reason] += 1
        if len(self.examples) < MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    def label_for(self, record: PredictionRecord) -> int | str | None:
        if record.label is not None:
            return record.label
        return self.labels.get(record.id) if record.id else None


def parse_line(line: bytes) -> PredictionRecord | LabelRecord | str:
    """One line -> a record, or the reason it is unusable (never raises)."""
    try:
        data = json.loads(line, parse_constant=_no_constants)
    except (ValueError, RecursionError) as exc:
        return f"not JSON ({type(exc).__name__})"
    if not isinstance(data, dict):
        return "not a JSON object"
    if data.get("schema") != TELEMETRY_SCHEMA:
        return "schema is not " + TELEMETRY_SCHEMA
    cls = LabelRecord if data.get("kind") == "label" else PredictionRecord
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ())) or "record"
        return f"{loc}: {err.get('msg', 'invalid')}"


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def telemetry_files(path: Path) -> list[Path]:
    """A .jsonl file, or every .jsonl/.ndjson file in a folder (recursively, sorted)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UsageError(f"telemetry {path} does not exist", hint="pass a .jsonl file or a folder of them")
    files = sorted(p for p in path.rglob("*") if p.suffix in TELEMETRY_SUFFIXES and p.is_file())
    if len(files) > MAX_FILES:
        raise UsageError(f"{path} holds {len(files)} telemetry files; at most {MAX_FILES} at once")
    return files


def read_telemetry(path: Path) -> TelemetryLog:
    log = TelemetryLog()
    for file in telemetry_files(path):
        log.files.append(str(file))
        with open(file, "rb") as f:
            _read_file(f, file.name, log)
    return log


def _read_file(f, name: str, log: TelemetryLog) -> None:  # noqa: ANN001 - a binary file
    number = 0
    while True:
        line = f.readline(MAX_LINE_BYTES + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_BYTES and not line.endswith(b"\n"):
            while (rest := f.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
                pass  # skip the rest of an over-long line without holding it
            log.lines += 1
            log.refuse(f"{name}:{number}", f"line longer than {MAX_LINE_BYTES} bytes")
            continue
        if not line.strip():
            continue
        log.lines += 1
        parsed = parse_line(line)
        if isinstance(parsed, str):
            log.refuse(f"{name}:{number}", parsed)
        elif isinstance(parsed, LabelRecord):
            log.labels[parsed.id] = parsed.label
        else:
            log.predictions.append(parsed)
