"""The sessions of one multiplexed stream (StreamMany): many named sessions attached to one call, each opened by its
first chunk and consumed as a Stream of its own would consume it.

A message's chunks run in rounds: a session's first chunk of the message in the first round, its second in the
second, so one session's chunks run in the order they came and different sessions' at once. In a round, the chunks
of models that take values for sessions already open are stepped together (one hand-over for all of them, however
many: server/service.py); the others (a session's first chunk, text, tokens) each as a Stream's would be. Every
session is attached to the stream until it closes or the stream ends, then lives its TTL like any named session.
A message's rows (one tensor for many open sessions of one model) run after its chunks, all in one hand-over.
Free of gRPC: the API layer converts and counts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import TypeVar

from rnnserve.server.errors import InvalidArgument, NotFound, ServeError
from rnnserve.server.repository import Model
from rnnserve.server.requests import Chunk, ChunkResult, StreamStart
from rnnserve.server.service import InferenceService, StreamSession
from rnnserve.server.sessions import Session

Entry = TypeVar("Entry")


class Multiplexed:
    def __init__(self, service: InferenceService):
        self._service = service
        self._open: dict[str, tuple[AsyncExitStack, StreamSession]] = {}

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
        opened = await stack.enter_async_context(self._service.open_stream(model, start))
        self._open[session_id] = (stack, opened)

    def session(self, session_id: str) -> Session:
        if session_id not in self._open:
            raise NotFound(f"session {session_id!r} is not open on this stream: send `start` with its first chunk")
        return self._open[session_id][1].session

    def rows(self, session_ids: list[str]) -> list[Session | ServeError]:
        """The sessions a message's rows name, in order: each open on this stream and named once, or its error."""
        sessions: list[Session | ServeError] = []
        seen: set[str] = set()
        for i, session_id in enumerate(session_ids):
            if session_id in seen:
                sessions.append(InvalidArgument(f"rows.session_ids[{i}]", f"{session_id!r} is named twice: a session's steps go in its one row"))
            elif session_id not in self._open:
                sessions.append(NotFound(f"rows.session_ids[{i}]: session {session_id!r} is not open on this stream: open it with a chunk with `start` first"))
            else:
                sessions.append(self._open[session_id][1].session)
            seen.add(session_id)
        return sessions

    def together(self, session_id: str) -> bool:
        """Whether a chunk for this session (without `start`) may be stepped with others: it is open, of a model
        that takes values."""
        return session_id in self._open and self._open[session_id][1].session.model.card.input.values

    async def consume(self, session_id: str, chunk: Chunk) -> ChunkResult:
        return await self._open[session_id][1](chunk)

    async def close(self, session_id: str) -> None:
        """Closes the session now (after its chunk was answered)."""
        if session_id in self._open:
            await self._detach(session_id)
            self._service.close_session(session_id)

    async def _detach(self, session_id: str) -> None:
        stack, _ = self._open.pop(session_id)
        await stack.aclose()


def rounds(entries: list[Entry], session_of: Callable[[Entry], str]) -> list[list[int]]:
    """The entries' indices in rounds: each session's first entry in the first, its second in the second, …"""
    seen: dict[str, int] = {}
    out: list[list[int]] = []
    for index, entry in enumerate(entries):
        session = session_of(entry)
        number = seen[session] = seen.get(session, -1) + 1
        if number == len(out):
            out.append([])
        out[number].append(index)
    return out
