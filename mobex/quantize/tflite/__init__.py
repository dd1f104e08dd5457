"""The TFLite int8 pipeline and the ai-edge-quantizer recipes of the other TFLite variants.

recipes.py maps a variant to its recipe; static_int8.py runs the int8 steps: calibration.py (activation ranges),
equalize.py (cross-layer equalization), gptq.py (weight levels), bias_correction.py, bias_range.py (int32 bias
fit), search.py (float fallback of sensitive ops), qat.py (quantization-aware fine-tuning), on graph.py (the
flatbuffer view they share)."""
