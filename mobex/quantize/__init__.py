"""Quantization of converted models, one subpackage per target (tflite/, coreml/) and the shared GPTQ math
(rounding.py) and feed checks (feeds.py)."""
