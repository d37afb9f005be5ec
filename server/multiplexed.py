"""The sessions of one multiplexed stream (StreamMany): many named sessions attached to one call, each opened by its
first chunk and consumed as a Stream of its own would consume it.

A message's chunks for different sessions run at once, so the engine batches them into one onnxruntime call; chunks
for the same session run in the order they came. Every session is attached to the stream until it closes or the
stream ends, then lives its TTL like any named session. Free of gRPC: the API layer converts and counts.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TypeVar

from rnnserve.server.errors import InvalidArgument, NotFound
from rnnserve.server.repository import Model
from rnnserve.server.requests import Chunk, ChunkResult, StreamStart
from rnnserve.server.service import InferenceService

Entry = TypeVar("Entry")
Answer = TypeVar("Answer")


class Multiplexed:
    def __init__(self, service: InferenceService):
        self._service = service
        self._open: dict[str, tuple[Model, AsyncExitStack, Callable[[Chunk], Awaitable[ChunkResult]]]] = {}

    async def __aenter__(self) -> Multiplexed:
        return self

    async def __aexit__(self, *exc) -> None:
        """The stream has ended: every session still attached to it is detached (named sessions live on)."""
        for session_id in list(self._open):
            await self._detach(session_id)

    async def open(self, session_id: str, model: Model, start: StreamStart) -> None:
        if session_id in self._open:
            raise InvalidArgument("start", f"session {session_id!r} is already open on this stream: send start with its first chunk only")
        stack = AsyncExitStack()
        consume = await stack.enter_async_context(self._service.open_stream(model, start))
        self._open[session_id] = (model, stack, consume)

    def model(self, session_id: str) -> Model:
        if session_id not in self._open:
            raise NotFound(f"session {session_id!r} is not open on this stream: send `start` with its first chunk")
        return self._open[session_id][0]

    async def consume(self, session_id: str, chunk: Chunk, close: bool) -> ChunkResult:
        """The chunk's answer; with `close`, the session is then closed."""
        result = await self._open[session_id][2](chunk)
        if close:
            await self._detach(session_id)
            self._service.close_session(session_id)
        return result

    async def _detach(self, session_id: str) -> None:
        _, stack, _ = self._open.pop(session_id)
        await stack.aclose()


async def in_session_order(entries: list[Entry], session_of: Callable[[Entry], str], answer: Callable[[Entry], Awaitable[Answer]]) -> list[Answer]:
    """Each entry's answer, in the entries' order: different sessions' at once, one session's one after another."""
    by_session: dict[str, list[int]] = {}
    for index, entry in enumerate(entries):
        by_session.setdefault(session_of(entry), []).append(index)
    answers: list = [None] * len(entries)

    async def run(indices: list[int]) -> None:
        for index in indices:
            answers[index] = await answer(entries[index])

    await asyncio.gather(*(run(indices) for indices in by_session.values()))
    return answers
