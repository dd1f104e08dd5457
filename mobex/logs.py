"""Keep third-party chatter out of the user's terminal.

coremltools warns at import that its native runtime is missing (always true on Linux, and the
reason mobex has a reference interpreter) and that torch 2.13 is untested (mobex's shims and tests
cover that); TensorFlow-style C++ logs and tqdm bars from the converters add noise too. Real
errors still surface: they are raised, and export failures quote the worker's log.
"""

from __future__ import annotations

import logging
import os


def quiet_third_party_logs() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(torch|coremltools|litert_torch).*")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("coremltools", "torchao", "absl", "torch._export", "torch.export", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
