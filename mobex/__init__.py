"""mobex: ship PyTorch models to phones as validated, signed TFLite, Core ML and ExecuTorch bundles.

Heavy libraries (torch, coremltools, litert-torch) are imported lazily inside the stages that
need them, so `mobex --help` and `mobex verify` stay fast.
"""

__version__ = "0.1.0"
