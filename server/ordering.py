"""Answering a stream of requests that name sequences, as Triton's ModelStreamInfer carries them: the requests of
one sequence run one after another, in the order they came; different sequences run concurrently (so their steps
batch together); answers go out as they are ready. At most `limit` requests are in flight: beyond it, reading
waits, so a client that sends faster than it reads slows itself down, not the server.

A request runs in a task of its own, or, where `take_now` takes it, with no task at all: `take_now(request, done)`
starts it and calls `done(answer)` later, from the event loop (how a sequence's common step is batched with every
other stream's: server/tensors.py). Either way the sequence's next request starts when its answer is ready."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import TypeVar

Request = TypeVar("Request")
Answer = TypeVar("Answer")


async def answers_in_sequence_order(
    requests: AsyncIterator[Request],
    sequence_of: Callable[[Request], Hashable | None],
    answer: Callable[[Request], Awaitable[Answer]],
    limit: int,
    take_now: Callable[[Request, Callable[[Answer], None]], bool] | None = None,
) -> AsyncIterator[Answer]:
    """`answer` must not raise: its errors are answers too. A request whose sequence is None runs on its own.
    `take_now` returns False for a request it does not take (it runs in a task, by `answer`)."""
    ready: asyncio.Queue[Answer | None] = asyncio.Queue()
    in_flight = asyncio.Semaphore(limit)
    waiting: dict[Hashable, deque[Request]] = {}  # sequences with a request running → their next requests
    workers: set[asyncio.Task] = set()
    open_requests = 0
    all_answered = asyncio.Event()
    all_answered.set()

    def begin(sequence: Hashable | None, request: Request) -> None:
        if take_now is not None and take_now(request, lambda response: answered(sequence, response)):
            return
        worker = asyncio.create_task(work(sequence, request))
        workers.add(worker)
        worker.add_done_callback(workers.discard)

    async def work(sequence: Hashable | None, request: Request) -> None:
        answered(sequence, await answer(request))

    def answered(sequence: Hashable | None, response: Answer) -> None:
        """The request's answer is out; the sequence's next request, if one came meanwhile, starts."""
        nonlocal open_requests
        ready.put_nowait(response)
        in_flight.release()
        open_requests -= 1
        if not open_requests:
            all_answered.set()
        if sequence is None:
            return
        if waiting[sequence]:
            begin(sequence, waiting[sequence].popleft())
        else:
            del waiting[sequence]

    async def read() -> None:
        nonlocal open_requests
        try:
            async for request in requests:
                await in_flight.acquire()
                open_requests += 1
                all_answered.clear()
                sequence = sequence_of(request)
                if sequence is not None and sequence in waiting:
                    waiting[sequence].append(request)
                    continue
                if sequence is not None:
                    waiting[sequence] = deque()
                begin(sequence, request)
            await all_answered.wait()  # the client is done sending: answer what it sent
        finally:
            ready.put_nowait(None)  # the end: of the stream, or of the reader, failed

    reader = asyncio.create_task(read())
    try:
        while (item := await ready.get()) is not None:
            yield item
        await reader  # raises what ended the reader, if anything did
    finally:
        for task in (reader, *workers):
            task.cancel()
        await asyncio.gather(reader, *workers, return_exceptions=True)
