"""Converters from PyTorch to on-device formats: TFLite (litert-torch) and Core ML (coremltools)."""
