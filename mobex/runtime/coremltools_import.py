"""`import coremltools` without the converters mobex never uses: the MIL interpreter and the Core ML converter
both load coremltools through here."""

from __future__ import annotations

from typing import Any

# Packages coremltools imports at start-up only to learn whether their converters are available
# (`coremltools._deps`): scikit-learn, xgboost, libsvm, TensorFlow, transformers, and ExecuTorch
# (EdgeProgram input). mobex converts torch.nn.Modules / ExportedPrograms and never uses those
# converters; importing them costs ~12 s of the ~19 s `import coremltools` takes on the 2-core VM
# (measured with `python -X importtime`). torchao stays: the torch frontend needs it for
# torchao-quantized graphs.
UNUSED_BY_MOBEX = ("sklearn", "xgboost", "libsvm", "tensorflow", "transformers", "executorch")


def import_coremltools() -> Any:
    """`import coremltools`, without importing the packages in UNUSED_BY_MOBEX that are not loaded yet.

    They are hidden only while coremltools imports (an entry of None in sys.modules makes `import`
    raise ImportError, which coremltools takes as "not installed"); afterwards they import normally.
    A process that already imported coremltools gets it as it is.
    """
    import sys

    if "coremltools" in sys.modules:
        import coremltools

        return coremltools
    hidden = [name for name in UNUSED_BY_MOBEX if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]
    try:
        import coremltools
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return coremltools
