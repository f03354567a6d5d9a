"""Dynamic batching: images from concurrent requests merged into one forward pass.

The first image to arrive waits at most `max_wait_s` for others, up to `max_batch_size` images;
while a forward runs, new images queue and make the next batch. Forwards run one at a time on a
single thread (one model, one device), off the event loop, so requests keep being read meanwhile.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class Batcher:
    """`await submit(items)` -> one result per item, computed by `run_batch(list_of_items)` in merged batches."""

    def __init__(self, run_batch: Callable[[list], list], max_batch_size: int, max_wait_s: float,
                 on_batch: Callable[[int], None] | None = None):
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self.queue: asyncio.Queue | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="synood-forward")
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.queue = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        self.executor.shutdown(wait=True)

    async def submit(self, items: list) -> list:
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            fut = loop.create_future()
            self.queue.put_nowait((item, fut))
            futures.append(fut)
        return list(await asyncio.gather(*futures))

    async def _collect(self) -> list[tuple[Any, asyncio.Future]]:
        loop = asyncio.get_running_loop()
        batch = [await self.queue.get()]
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - loop.time()
            if left <= 0:
                break
            # not asyncio.wait_for: on Python 3.11 its timeout can drop an item the get had already taken
            getter = asyncio.ensure_future(self.queue.get())
            done, _ = await asyncio.wait({getter}, timeout=left)
            if getter in done:
                batch.append(getter.result())
            else:
                getter.cancel()  # a cancelled Queue.get leaves its item in the queue
                break
        return batch

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            live = [(item, fut) for item, fut in batch if not fut.done()]  # a client that went away
            if not live:
                continue
            try:
                results = await loop.run_in_executor(self.executor, self.run_batch, [item for item, _ in live])
            except Exception as exc:  # the forward failed: every request in it gets the error, the service goes on
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            if self.on_batch is not None:
                self.on_batch(len(live))
            for (_, fut), result in zip(live, results):
                if not fut.done():
                    fut.set_result(result)
