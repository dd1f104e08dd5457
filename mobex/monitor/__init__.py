"""`mobex monitor`: field telemetry of a shipped model against what its build validated (docs/monitoring.md).

`record` is the telemetry record (JSON Lines) and its bounded reader, `windows` groups records by
time window and by app version / device model, `evaluate` computes task metrics, drift and
latency per group, `thresholds` turns them into alerts, `report` and `html` present the result.
"""
