"""Continuous batching: the steps of all of a model's sessions run together, one onnxruntime call per
batch, on one worker thread, so the event loop keeps serving while the runtime works.

While the runtime is busy, new steps queue up; when it is free, the batcher takes every step that is
ready (up to `max_batch`, optionally waiting `max_queue_delay_ms` for more), groups them by length T
(a generation step, a chunk, a prompt), and runs each group as one call over a gather of the sessions'
state rows. Each step resolves exactly once, with its own logits or its own error.

The batcher owns every slot's state: sessions allocate, reset and free slots through it, and the state slab
is read and written only on its runtime thread. A slot that is allocated or reset starts its next step from
the initial state (or from what its encoder writes). Freeing a slot that still has a step (or an encoding)
queued or running, because its stream was cancelled mid-step, waits behind it, so nothing can write into a
slot that a new session owns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from server.errors import RuntimeFailure
from server.metrics import ModelMetrics
from server.runtime import Runtime
from server.generation import Generation
from server.sampling import SamplingParams, sample_rows

log = logging.getLogger(__name__)

MAX_UNREAD_TOKENS = 256  # a generation whose client has not taken this many tokens waits for it to catch up

@dataclass(slots=True)
class _Step:
    slot: int
    tokens: np.ndarray  # [T] int64
    result: asyncio.Future | None  # resolves to this step's outputs: [logits [T, V], *extra outputs [T, ...]]
    queued: float  # time.perf_counter() when it joined the queue
    generation: Generation | None = None  # instead of a result: the generation whose next token this step samples

    def wanted(self) -> bool:
        """False once whoever asked for it has gone away: it is skipped."""
        return not self.generation.stopped if self.generation is not None else not self.result.cancelled()


@dataclass(slots=True)
class _Free:
    slot: int


@dataclass(slots=True)
class _Encode:
    slot: int
    inputs: dict[str, np.ndarray]
    result: asyncio.Future  # resolves to None once the slot's state is written


class Batcher:
    def __init__(self, runtime: Runtime, name: str, metrics: ModelMetrics, max_batch: int = 64, max_queue_delay_ms: float = 0.0):
        self._runtime = runtime
        self._metrics = metrics
        self._name = name
        self._max_batch = max(1, max_batch)
        self._max_queue_delay_s = max_queue_delay_ms / 1000.0
        self._queue: asyncio.Queue[_Step | _Free | _Encode] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"runtime-{name}")
        self._task: asyncio.Task | None = None
        self._steps_per_slot: Counter[int] = Counter()  # steps queued or running
        self._fresh: set[int] = set()  # slots whose next step starts from the initial state
        metrics.watch(self._queue.qsize, lambda: runtime.slots_in_use, runtime.capacity)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"batcher-{self._name}")

    def allocate(self) -> int:
        """A slot for a new session, at the initial state (RESOURCE_EXHAUSTED when none is free)."""
        slot = self._runtime.allocate()
        self._fresh.add(slot)
        return slot

    def reset(self, slot: int) -> None:
        """The slot's next step starts from the initial state again."""
        self._fresh.add(slot)

    async def step(self, slot: int, tokens: list[int]) -> list[np.ndarray]:
        """[logits [T, V], *extra outputs] for `tokens` continuing the slot's state."""
        result = asyncio.get_running_loop().create_future()
        self._queue_step(slot, np.asarray(tokens, dtype=np.int64), result)
        return await result

    def generate(self, slot: int, prompt: list[int], params: SamplingParams, eos: int | None, banned: int | None,
                 extra_outputs: bool) -> Generation:
        """Starts a generation from `prompt` in the slot: it runs here until it ends or is stopped."""
        generation = Generation(slot, params, eos, banned, extra_outputs)
        self._queue_step(slot, np.asarray(prompt, dtype=np.int64), None, generation)
        return generation

    async def take(self, generation: Generation) -> tuple[list[int], list[list[np.ndarray]]]:
        """Waits until the generation has written something, then takes all it has: (tokens, their extra outputs).
        Taking is what lets a generation that waited for its client go on."""
        while not generation.tokens and not generation.error:
            generation.ready.clear()
            await generation.ready.wait()
        if generation.error:
            raise generation.error
        tokens, extras = generation.tokens, generation.extras
        generation.tokens, generation.extras = [], []
        if generation.paused_on is not None:
            self._queue_step(generation.slot, np.array([generation.paused_on], np.int64), None, generation)
            generation.paused_on = None
        return tokens, extras

    def _queue_step(self, slot: int, tokens: np.ndarray, result: asyncio.Future | None, generation: Generation | None = None) -> None:
        self._steps_per_slot[slot] += 1
        self._queue.put_nowait(_Step(slot, tokens, result, time.perf_counter(), generation))

    async def encode(self, slot: int, inputs: dict[str, np.ndarray]) -> None:
        """Writes the slot's initial state with the model's encoder. It runs in queue order on the runtime's
        thread, so never while a step reads the slab, and a free queued after it waits for it. One call per
        request: encodings are not batched."""
        result = asyncio.get_running_loop().create_future()
        self._steps_per_slot[slot] += 1
        self._queue.put_nowait(_Encode(slot, inputs, result))
        await result

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
        while True:
            batch, barrier = await self._take_batch()
            live = [job for job in batch if job.wanted()]  # skip steps whose request went away
            by_length: dict[int, list[_Step]] = defaultdict(list)
            for job in live:
                by_length[job.tokens.size].append(job)
            for group in by_length.values():
                await self._run_group(group)
            for job in batch:
                self._steps_per_slot[job.slot] -= 1
            if isinstance(barrier, _Encode):
                await self._run_encode(barrier)
                self._steps_per_slot[barrier.slot] -= 1
            elif isinstance(barrier, _Free):
                self._runtime.free(barrier.slot)

    async def _take_batch(self) -> tuple[list[_Step], _Free | _Encode | None]:
        """The steps ready now, in order, stopping at a free or an encoding so it runs after the steps before it."""
        job = await self._queue.get()
        batch: list[_Step] = []
        deadline = asyncio.get_running_loop().time() + self._max_queue_delay_s
        while True:
            if not isinstance(job, _Step):
                return batch, job
            batch.append(job)
            if len(batch) >= self._max_batch:
                return batch, None
            try:
                job = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return batch, None
                try:
                    job = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    return batch, None

    async def _run_encode(self, job: _Encode) -> None:
        if job.result.cancelled():  # its request went away
            return
        self._fresh.discard(job.slot)  # the encoder writes the slot's whole state
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._runtime.encode, job.slot, job.inputs)
        except Exception as err:
            log.exception("model %s: encoder failed", self._name)
            if not job.result.done():
                job.result.set_exception(RuntimeFailure(f"model {self._name}: encoding failed: {err}"))
            return
        if not job.result.done():
            job.result.set_result(None)

    async def _run_group(self, group: list[_Step]) -> None:
        slots = [job.slot for job in group]
        fresh = np.array([slot in self._fresh for slot in slots])  # [B]
        self._fresh.difference_update(slots)
        tokens = np.stack([job.tokens for job in group])  # [B, T]
        generating = [row for row, job in enumerate(group) if job.generation is not None]
        generations = [group[row].generation for row in generating]
        loop = asyncio.get_running_loop()
        began = time.perf_counter()
        try:
            if len(group) == 1 and not generations and self._queue.empty():
                # a lone step of a request that waits for it, with nothing behind it, runs here: the hop to the
                # runtime thread and back costs more than the step (measured: a single stream's step p50 0.77 ms
                # inline, 0.89 ms hopping). A generation hops: its handler writes while the next step runs.
                outputs, sampled = self._step_and_sample(slots, fresh, tokens, generating, generations)
                await asyncio.sleep(0)  # let what arrived meanwhile queue up, to join the next batch
            else:
                outputs, sampled = await loop.run_in_executor(
                    self._executor, self._step_and_sample, slots, fresh, tokens, generating, generations
                )
        except Exception as err:  # onnxruntime's own errors: these steps fail, the batcher goes on
            log.exception("model %s: step failed", self._name)
            failure = RuntimeFailure(f"model {self._name}: inference failed: {err}")
            for job in group:
                if job.generation is not None:
                    job.generation.error = failure
                    job.generation.ready.set()
                elif not job.result.done():
                    job.result.set_exception(failure)
            return
        self._metrics.batch(tokens.size, len(group), [began - job.queued for job in group], time.perf_counter() - began)
        if generations:
            self._metrics.tokens_generated.inc(len(generations))
        for row, job in enumerate(group):
            if job.result is not None and not job.result.done():
                job.result.set_result([output[row] for output in outputs])
        for row, generation, token in zip(generating, generations, sampled.tolist()):
            self._advance(generation, token, [output[row, -1] for output in outputs[1:]])

    def _step_and_sample(self, slots, fresh, tokens, generating: list[int], generations: list[Generation]):
        """On the runtime thread: one step for the whole batch, then the next token of every generating row."""
        outputs = self._runtime.step(slots, fresh, tokens)
        if not generations:
            return outputs, np.empty(0, np.int64)
        logits = outputs[0][generating, -1]  # [G, V]: each generating row's last step
        banned = {g.banned for g in generations} - {None}
        if banned:  # (the rows are a copy already)
            logits[:, list(banned)] = -np.inf
        return outputs, sample_rows(logits, [g.params for g in generations], [g.rng for g in generations])

    def _advance(self, generation: Generation, token: int, extras: list[np.ndarray]) -> None:
        """Hands the token to the generation's handler and, unless it has ended, steps it again."""
        if generation.stopped:
            return
        generation.tokens.append(token)
        if generation.extra_outputs:
            generation.extras.append(extras)
        generation.remaining -= 1
        generation.ended = token == generation.eos or generation.remaining == 0
        if not generation.ended:
            if len(generation.tokens) >= MAX_UNREAD_TOKENS:  # its client is not keeping up: wait for it
                generation.paused_on = token
            else:
                self._queue_step(generation.slot, np.array([token], np.int64), None, generation)
        generation.ready.set()
