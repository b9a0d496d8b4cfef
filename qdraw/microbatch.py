"""A small micro-batcher for asyncio servers: concurrent requests share one model call.

Requests ``await batcher.submit(item)``; one worker task takes the first waiting item, then every item already queued
(and those arriving within ``max_wait_ms``) up to ``max_batch``, and runs ``fn(items)`` in one background thread, so
the event loop keeps accepting requests while the model runs. Under load the queue fills while a batch runs and the
next batch is larger (dynamic batching, as in Triton or TorchServe); an idle server answers a lone request after at
most ``max_wait_ms``. ``fn`` returns one result per item, or an Exception for an item that failed alone (a bad
drawing); an exception raised by ``fn`` itself fails that batch's requests, and the worker goes on with the next.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class BatchStats:
    """Counters for /api/info and the load test: batches run, items served, the largest batch."""

    batches: int = 0
    items: int = 0
    largest: int = 0
    busy_s: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)


class MicroBatcher:
    """Collect items from concurrent coroutines into batches for one blocking function (module docstring)."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 32, max_wait_ms: float = 2.0):
        if max_batch < 1 or max_wait_ms < 0:
            raise ValueError(f"need max_batch >= 1 and max_wait_ms >= 0, got {max_batch} and {max_wait_ms}")
        self.fn, self.max_batch, self.max_wait = fn, int(max_batch), max_wait_ms / 1000
        self.stats = BatchStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._pool: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the worker on the running loop (an app's lifespan start-up)."""
        self._queue = asyncio.Queue()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="microbatch")
        self._task = asyncio.create_task(self._worker())

    async def stop(self) -> None:
        """Stop the worker; requests still queued get a RuntimeError."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("server shutting down"))
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._task = self._pool = None

    async def submit(self, item: object) -> object:
        """The result of fn for item, computed in some batch; raises what fn gave for it."""
        if self._queue is None or self._task is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((item, fut))
        return await fut

    async def _collect(self) -> list[tuple[object, asyncio.Future]]:
        """The first waiting item, then what is queued or arrives within max_wait, up to max_batch."""
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a client gone: its future was cancelled
            if not live:
                continue
            t0 = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._pool, self.fn, [item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"batch function returned {len(results)} results for {len(live)} items")
            except Exception as exc:  # the whole batch failed: every request gets the error, the worker goes on
                results = [exc] * len(live)
            self._record(len(live), time.perf_counter() - t0)
            for (_, fut), res in zip(live, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _record(self, n: int, seconds: float) -> None:
        s = self.stats
        s.batches, s.items, s.largest, s.busy_s = s.batches + 1, s.items + n, max(s.largest, n), s.busy_s + seconds
        s.sizes[n] = s.sizes.get(n, 0) + 1
