"""Dynamic batching: samples of concurrent requests share one model invocation.

Used only when the model takes more than one sample per invocation (the manifest's batch axis
B > 1): a model exported for batch 1 cannot take more, and padding is all a batcher could add.
The first waiting sample opens a batch; the batch runs when it holds B samples or `delay_s` after
it opened, whichever comes first, on the worker threads; several batches may run at once (one
per worker). Samples of different model versions (during a swap) never share a batch.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from mobex.serving.model import RunResult, ServedModel


@dataclass
class _Item:
    model: ServedModel
    feed: dict[str, np.ndarray]  # one sample, batch axis of 1
    future: asyncio.Future


class DynamicBatcher:
    def __init__(self, executor: Executor, delay_s: float, on_batch=None) -> None:  # noqa: ANN001
        self.executor = executor
        self.delay_s = delay_s
        self.on_batch = on_batch  # called with (model, sizes) after each invocation, in the worker
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._collect(), name="mobex-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def run(self, model: ServedModel, arrays: dict[str, np.ndarray], n: int) -> RunResult:
        """Outputs for N samples, each sample batched with whatever else is waiting."""
        assert self._queue is not None, "start() the batcher inside the event loop first"
        loop = asyncio.get_running_loop()
        futures = []
        for i in range(n):
            fut = loop.create_future()
            self._queue.put_nowait(_Item(model, {k: a[i : i + 1] for k, a in arrays.items()}, fut))
            futures.append(fut)
        rows = await asyncio.gather(*futures)
        outputs = [np.concatenate([r[0][j] for r in rows], axis=0) for j in range(len(rows[0][0]))]
        return RunResult(outputs, [], max(r[1] for r in rows))

    async def _collect(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Item | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch = [first]
            deadline = loop.time() + self.delay_s
            while len(batch) < first.model.contract.batch:
                remaining = deadline - loop.time()
                try:
                    item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(
                        self._queue.get(), remaining
                    )
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if item.model is not first.model:
                    carry = item  # another model version: it opens the next batch
                    break
                batch.append(item)
            task = loop.create_task(self._invoke(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _invoke(self, batch: list[_Item]) -> None:
        live = [item for item in batch if not item.future.done()]  # timed-out requests are skipped
        if not live:
            return
        model = live[0].model
        feed = {k: np.concatenate([item.feed[k] for item in live], axis=0) for k in live[0].feed}
        try:
            result = await asyncio.get_running_loop().run_in_executor(self.executor, model.run_samples, feed, len(live))
        except Exception as exc:  # noqa: BLE001 - each waiting request gets the error
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(model, result.sizes)
        for i, item in enumerate(live):
            if not item.future.done():
                item.future.set_result(([o[i : i + 1] for o in result.outputs], result.invocation_s))
