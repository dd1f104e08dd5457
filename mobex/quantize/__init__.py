"""Compression: pruning before conversion, quantization of the converted models."""
