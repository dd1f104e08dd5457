"""Core ML weight compression and w8a8 (compress.py), with calibrated weight rounding (gptq.py)."""
