"""Validation: runners for each runtime, parity and latency metrics, gates, reports."""
