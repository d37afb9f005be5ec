"""Runs a model's steps in arrival order on one worker thread, so the event loop keeps serving.

One batcher per model version owns every call into its runtime. A step resolves exactly once, with its
own logits or its own error. Freeing a slot that still has a step queued or running (its stream was
cancelled mid-step) waits behind that step, so it can never write into a slot a new session owns.
(This issue runs one sequence per call; batching across sequences builds on this queue.)
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from server.errors import RuntimeFailure
from server.runtime import Runtime

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Step:
    slot: int
    tokens: np.ndarray  # [1, T] int64
    result: asyncio.Future


@dataclass(slots=True)
class _Free:
    slot: int


class Batcher:
    def __init__(self, runtime: Runtime, name: str):
        self._runtime = runtime
        self._name = name
        self._queue: asyncio.Queue[_Step | _Free] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"runtime-{name}")
        self._task: asyncio.Task | None = None
        self._steps_per_slot: Counter[int] = Counter()  # steps queued or running

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._name}")

    async def step(self, slot: int, tokens: np.ndarray) -> np.ndarray:
        """logits [1, T, V] for `tokens` [1, T] continuing the slot's state."""
        result = asyncio.get_running_loop().create_future()
        self._steps_per_slot[slot] += 1
        self._queue.put_nowait(_Step(slot, tokens, result))
        return await result

    def free(self, slot: int) -> None:
        if self._steps_per_slot[slot]:
            self._queue.put_nowait(_Free(slot))
        else:
            self._runtime.free(slot)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            if isinstance(job, _Free):
                self._runtime.free(job.slot)
                continue
            try:
                await self._run_step(job, loop)
            finally:
                self._steps_per_slot[job.slot] -= 1

    async def _run_step(self, job: _Step, loop: asyncio.AbstractEventLoop) -> None:
        if job.result.cancelled():  # its stream went away before the step started
            return
        try:
            logits = await loop.run_in_executor(self._executor, self._runtime.step, job.slot, job.tokens)
        except Exception as err:  # onnxruntime's own errors: this step fails, the batcher goes on
            log.exception("model %s: step failed", self._name)
            if not job.result.done():
                job.result.set_exception(RuntimeFailure(f"model {self._name}: inference failed: {err}"))
        else:
            if not job.result.done():
                job.result.set_result(logits)
