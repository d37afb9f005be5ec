"""Answering a stream of requests that name sequences, as Triton's ModelStreamInfer carries them: the requests of
one sequence run one after another, in the order they came; different sequences run concurrently (so their steps
batch together); answers go out as they are ready. At most `limit` requests are in flight: beyond it, reading
waits, so a client that sends faster than it reads slows itself down, not the server."""

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
) -> AsyncIterator[Answer]:
    """`answer` must not raise: its errors are answers too. A request whose sequence is None runs on its own."""
    ready: asyncio.Queue[Answer | None] = asyncio.Queue()
    in_flight = asyncio.Semaphore(limit)
    waiting: dict[Hashable, deque[Request]] = {}  # sequences with a request running → their next requests
    workers: set[asyncio.Task] = set()

    async def work(sequence: Hashable | None, request: Request) -> None:
        """Answers the request, then each request of the same sequence that came meanwhile."""
        while True:
            ready.put_nowait(await answer(request))
            in_flight.release()
            if sequence is None or not waiting[sequence]:
                waiting.pop(sequence, None)
                return
            request = waiting[sequence].popleft()

    async def read() -> None:
        try:
            async for request in requests:
                await in_flight.acquire()
                sequence = sequence_of(request)
                if sequence is not None and sequence in waiting:
                    waiting[sequence].append(request)
                    continue
                if sequence is not None:
                    waiting[sequence] = deque()
                worker = asyncio.create_task(work(sequence, request))
                workers.add(worker)
                worker.add_done_callback(workers.discard)
            while workers:  # the client is done sending: answer what it sent
                await asyncio.gather(*workers)
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
