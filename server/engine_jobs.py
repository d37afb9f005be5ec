"""What crosses between the event loop and the engine thread (server/batcher.py): the jobs queued for the engine,
and the callbacks that hand its results back on the event loop, one per engine call."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rnnserve.server.generation import Generation

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepResult:
    """A step's outputs, and when asked for, its most probable outputs, ranked on the engine thread with the rest
    of its batch."""

    outputs: list[np.ndarray]  # [logits [T, V], *extra outputs [T, ...]]
    top_ids: np.ndarray | None = None  # [T, k], most probable first
    top_probabilities: np.ndarray | None = None  # [T, k]

    @staticmethod
    def joined(parts: list[StepResult]) -> StepResult:
        """One result of consecutive pieces of an input, as if it had run in one call."""
        outputs = [np.concatenate(pieces) for pieces in zip(*(p.outputs for p in parts))]
        if parts[0].top_ids is None:
            return StepResult(outputs)
        return StepResult(outputs, np.concatenate([p.top_ids for p in parts]), np.concatenate([p.top_probabilities for p in parts]))


@dataclass(slots=True)
class Together:
    """Steps queued together (a multiplexed message's, for many sessions): one future for all their results, in
    order, so the event loop wakes once for them, not once a step."""

    future: asyncio.Future
    results: list
    remaining: int


@dataclass(slots=True)
class Step:
    slot: int
    inputs: np.ndarray  # [T, *step]: token ids [T] int64, or values
    queued: float  # time.perf_counter() when it joined the queue
    result: asyncio.Future | None = None  # resolves to this step's StepResult
    top_k: int = 0  # rank the k most probable outputs of each step
    generation: Generation | None = None  # instead of a result: the generation whose next token this step samples
    parts: list[StepResult] | None = None  # a long input's pieces run so far (the engine thread's)
    together: tuple[Together, int] | None = None  # instead of a result: its place among steps queued together

    def wanted(self) -> bool:
        """False once whoever asked for it has gone away: it is skipped."""
        if self.generation is not None:
            return not self.generation.stopped
        return not (self.together[0].future if self.together else self.result).cancelled()

    @property
    def answered(self) -> bool:
        """Its outputs go back to someone (a generation's do not: it samples from them)."""
        return self.result is not None or self.together is not None


@dataclass(slots=True)
class Rows:
    """One step each of many slots as one job (the native front end's plain steps): their slots and inputs as arrays,
    their outputs answered as arrays in one call, with no object per row on either side. A step of one token a row:
    it never runs in pieces."""

    slots: list[int]  # [B]
    inputs: np.ndarray  # [B, 1, *step]
    queued: float  # time.perf_counter() when it joined the queue
    then: RowsDone  # called once, on the event loop, as soon as the outputs are there (or the error)
    answered: bool = False  # `then` was called (a stopped engine fails only what is unanswered)


RowsDone = Callable[[list[np.ndarray] | None, Exception | None], None]  # (the outputs, each [B, 1, ...]; or the error)


@dataclass(slots=True)
class Free:
    slot: int


@dataclass(slots=True)
class Encode:
    slot: int
    inputs: dict[str, np.ndarray]
    result: asyncio.Future  # resolves to None once the slot's state is written


@dataclass(slots=True)
class Read:
    slot: int
    result: asyncio.Future  # resolves to the slot's state: name → row


@dataclass(slots=True)
class Write:
    slot: int
    values: dict[str, np.ndarray]
    result: asyncio.Future  # resolves to None once the slot holds the values


@dataclass(slots=True)
class Resume:
    generation: Generation  # its client took tokens: if it waited for that, step it again


@dataclass(slots=True)
class Fault:
    """A fault of the engine's own in a lone step run on the event loop: the engine thread stops for good on it."""

    error: Exception
    group: list[Step]  # the lone step's, failed with the engine's other work
    blocks: list[Rows]


STOP = object()  # the engine thread's last job


def settle(future: asyncio.Future, value, error: Exception | None) -> None:
    if not future.done():
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def settle_all(results: list[tuple[asyncio.Future, object, Exception | None]]) -> None:
    for result in results:
        settle(*result)


def fail(group: list[Step], error: Exception, blocks: list[Rows] = ()) -> None:
    for block in blocks:
        _answer(block, None, error)
    for job in group:
        if job.generation is not None:
            fail_generation(job.generation, error)
        else:
            settle(job.together[0].future if job.together else job.result, None, error)


def fail_generation(generation: Generation, error: Exception) -> None:
    generation.error = error
    generation.ready.set()


def fail_job(job, error: Exception) -> None:
    """On the event loop: a job that a stopped engine will not run, or has not finished, fails with `error` (or a
    generation it was stepping)."""
    if isinstance(job, list):
        fail(job, error)
    elif isinstance(job, Step):
        fail([job], error)
    elif isinstance(job, Rows):
        fail([], error, [job])
    elif isinstance(job, (Encode, Read, Write)):
        settle(job.result, None, error)
    elif isinstance(job, Resume):
        fail_generation(job.generation, error)
    elif isinstance(job, Generation):
        fail_generation(job, error)
    elif isinstance(job, Fault):
        fail(job.group, error, job.blocks)


def deliver(group: list[Step], results: list[StepResult | None], generations: list[Generation], tokens: list[int],
             extras: list, blocks: list[Rows] = (), block_outputs: list[list[np.ndarray]] = ()) -> None:
    """On the event loop: every row's outputs to the request that waits for them, every generated token to its
    generation, each block's outputs to its callback."""
    for block, outputs in zip(blocks, block_outputs):
        _answer(block, outputs, None)
    for job, result in zip(group, results):
        if job.together is not None:
            together, index = job.together
            together.results[index] = result
            together.remaining -= 1
            if not together.remaining and not together.future.done():
                together.future.set_result(together.results)
        elif job.result is not None and not job.result.done():
            job.result.set_result(result)
    for generation, token, extra in zip(generations, tokens, extras):
        if generation.stopped:
            continue
        generation.tokens.append(token)
        if extra is not None:
            generation.extras.append(extra)
        generation.ready.set()


def _answer(block: Rows, outputs: list[np.ndarray] | None, error: Exception | None) -> None:
    """A block's callback, once, run where a fault in it cannot keep the rest of its call's rows from their answers."""
    if block.answered:
        return
    block.answered = True
    try:
        block.then(outputs, error)
    except Exception:  # a fault of ours in answering: logged, as the event loop logs a failed callback
        log.exception("answering a block of %d rows failed", len(block.slots))


def joined(then: RowsDone, parts: int) -> list[RowsDone]:
    """A `then` for each of the blocks one request of more rows than max_batch is queued as (Batcher.step_rows): once
    every block is done, `then` gets their outputs concatenated in order, or the first error."""
    outputs: list = [None] * parts
    errors: list[Exception] = []
    left = [parts]

    def part(index: int) -> RowsDone:
        def done(part_outputs: list[np.ndarray] | None, error: Exception | None) -> None:
            outputs[index] = part_outputs
            if error is not None:
                errors.append(error)
            left[0] -= 1
            if not left[0]:
                then(None, errors[0]) if errors else then([np.concatenate(o) for o in zip(*outputs)], None)

        return done

    return [part(index) for index in range(parts)]
