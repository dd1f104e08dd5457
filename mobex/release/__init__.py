"""Releases against the one they replace: baselines (previous bundles), their comparison with the new build,
the [release] budgets, and `mobex diff`."""
