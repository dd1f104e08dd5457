"""Int8 for ExecuTorch: PT2E with XNNPACK's quantizer, calibrated, with the accuracy work of TFLite int8.

graph.py (the exported float graph and its ops), observers.py (range estimation), quantizer.py
(XNNPACKQuantizer with ReLU6 fused and ops kept in float on request), equalize.py (cross-layer
equalization on the torch graph), static_int8.py (candidates and the float fallback search),
recipes.py (`quantize_executorch`: the `.pte` and its ExportedVariant).
"""
