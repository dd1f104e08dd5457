"""Torch-level work before any conversion: pruning (magnitude, structured), recovery fine-tuning, MAC counts."""
