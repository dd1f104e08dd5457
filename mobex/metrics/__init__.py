"""Numbers computed from outputs: parity and task metrics, and the gate limits that apply to a variant."""
