"""Runtimes that execute a model on one feed with the same contract: torch (the reference), LiteRT, the MIL
reference interpreter, Core ML on macOS; plus the latency harness that times any of them."""
