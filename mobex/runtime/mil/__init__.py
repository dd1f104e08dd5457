"""MIL reference interpreter: runs a saved Core ML mlprogram (.mlpackage) with numpy/torch kernels,
so Core ML parity can be checked where `MLModel.predict` is unavailable (Linux CI).

    runner = MilReferenceRunner(Path("Model.mlpackage"))
    runner.unsupported_ops()          # [] when every op has a kernel
    outputs = runner.run({"image": x})
"""

from .interpreter import MilExecutionError, MilReferenceRunner, MilState, UnsupportedOpError, supported_ops

__all__ = ["MilExecutionError", "MilReferenceRunner", "MilState", "UnsupportedOpError", "supported_ops"]
