"""The serving state behind the HTTP app: the current model, the worker threads, batching, swaps.

Requests run on a pool of `workers` threads, each with its own interpreter (see model.py). A swap
replaces the current model in one assignment: a request holds the model it started with until it
answers, so none is dropped or answered by a half-loaded model; the old model's files go when its
last request is done.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from mobex.serving.batching import DynamicBatcher
from mobex.serving.contract import DEFAULT_MAX_SAMPLES
from mobex.serving.metrics import ServingMetrics
from mobex.serving.model import RunResult, ServedModel
from mobex.serving.telemetry import TelemetrySink

log = logging.getLogger("mobex.serving")

MiB = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    workers: int = 2  # inference threads, one interpreter each
    threads: int = 1  # threads per interpreter
    timeout_s: float = 10.0  # per request, from the checked inputs to the outputs
    max_body_bytes: int = 16 * MiB  # request body cap (and the cap on what an .npz unpacks to)
    max_samples: int = DEFAULT_MAX_SAMPLES  # samples per request
    max_pending: int = 1024  # requests waiting for a worker before the server answers 503
    batch_delay_ms: float = 0.0  # > 0: dynamic batching with this delay (models with a batch axis > 1)
    token: str | None = None  # Bearer token; None: no authentication (only sensible on 127.0.0.1)


class Overloaded(Exception):
    """More requests are waiting than `max_pending`."""


class ModelService:
    def __init__(
        self, model: ServedModel, options: ServeOptions, metrics: ServingMetrics | None = None,
        telemetry: TelemetrySink | None = None,
    ) -> None:  # fmt: skip
        self.options = options
        self.metrics = metrics or ServingMetrics()
        self.telemetry = telemetry
        self.executor = ThreadPoolExecutor(max_workers=options.workers, thread_name_prefix="mobex-infer")
        self.batcher = (
            DynamicBatcher(self.executor, options.batch_delay_ms / 1000, on_batch=self._observe_batch)
            if options.batch_delay_ms > 0
            else None
        )
        self._model = model
        self._swap_lock = threading.Lock()
        self._pending = 0
        self.on_stop: list = []  # callables run at shutdown (uvicorn re-raises SIGTERM after it: no finally runs)
        self.metrics.serving(model)
        self.warm_threads(model)

    @property
    def model(self) -> ServedModel:
        return self._model

    def batching_for(self, model: ServedModel) -> bool:
        return self.batcher is not None and model.contract.batch > 1

    def swap(self, new: ServedModel) -> ServedModel:
        """Serve `new` from the next request on; returns the model it replaced (now retired)."""
        try:
            self.warm_threads(new)
        except BaseException:
            new.retire()
            raise
        with self._swap_lock:
            old, self._model = self._model, new
            self.metrics.serving(new, previous=old)
        old.retire()
        log.info("now serving %s %s (was %s)", new.info.name, new.info.version, old.info.version)
        return old

    async def start(self) -> None:
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.telemetry is not None:
            self.telemetry.close()
        for hook in self.on_stop:
            hook()
        self._model.retire()

    async def infer(self, model: ServedModel, arrays: dict[str, np.ndarray], n: int) -> RunResult:
        """Outputs for N checked samples; TimeoutError after `timeout_s`, Overloaded when too many wait."""
        if self._pending >= self.options.max_pending:
            raise Overloaded
        self._pending += 1
        try:
            if self.batching_for(model):
                work = self.batcher.run(model, arrays, n)  # type: ignore[union-attr]
            else:
                work = asyncio.get_running_loop().run_in_executor(self.executor, self._run_direct, model, arrays, n)
            return await asyncio.wait_for(work, self.options.timeout_s)
        finally:
            self._pending -= 1

    def _run_direct(self, model: ServedModel, arrays: dict[str, np.ndarray], n: int) -> RunResult:
        result = model.run_samples(arrays, n)
        self._observe_batch(model, result.sizes)
        return result

    def warm_threads(self, model: ServedModel, timeout_s: float = 60.0) -> None:
        """Build `model`'s runner on every worker thread now, so no request pays for an interpreter.

        Each task waits at a barrier until all have started, which puts exactly one on each thread.
        """
        n = self.options.workers
        barrier = threading.Barrier(n, timeout=timeout_s)

        def build() -> None:
            model.runner()
            barrier.wait()

        for future in [self.executor.submit(build) for _ in range(n)]:
            future.result(timeout=timeout_s)

    def _observe_batch(self, model: ServedModel, sizes: list[int]) -> None:
        for size in sizes:
            self.metrics.batch_size.observe(size)
