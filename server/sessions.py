"""Sessions: a sequence's claim on a slot of its model's state slab, from open to close or expiry.

An ephemeral session lives as long as its call. A named session outlives its stream for an idle TTL so
a later stream can resume it; at most one stream is attached to it at a time.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from server.errors import AlreadyExists, FailedPrecondition, NotFound
from server.repository import Model


@dataclass(eq=False)
class Session:
    id: str
    model: Model
    slot: int
    named: bool
    position: int = 0  # steps consumed since creation or the last reset
    attached: bool = True
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)

    async def step(self, tokens: list[int]) -> np.ndarray:
        """logits [T, V] after each of `tokens`, continuing this session's state."""
        return (await self.step_outputs(tokens))[0]

    async def step_outputs(self, tokens: list[int]) -> list[np.ndarray]:
        """[logits [T, V], *the model's extra outputs (e.g. attention [T, S])] after each of `tokens`."""
        outputs = await self.model.batcher.step(self.slot, tokens)
        self.position += len(tokens)
        return outputs

    async def encode(self, inputs: dict[str, np.ndarray]) -> None:
        """Sets this session's initial state from a request (a class label, a source text) with the model's encoder."""
        await self.model.batcher.encode(self.slot, inputs)

    def reset(self) -> None:
        self.model.runtime.slab.reset(self.slot)
        self.position = 0


class SessionRegistry:
    def __init__(self, ttl_s: float):
        self._ttl_s = ttl_s
        self._named: dict[str, Session] = {}

    @asynccontextmanager
    async def attach(self, model: Model, session_id: str = "", resume: bool = False):
        """A session for the duration of one call: created, or resumed by id; always detached at the end."""
        session = self._resume(model, session_id) if resume else self._open(model, session_id)
        try:
            yield session
        finally:
            self._detach(session)

    def close(self, session_id: str) -> None:
        session = self._named.get(session_id)
        if session is None:
            raise NotFound(self._unknown(session_id))
        if session.attached:
            raise FailedPrecondition(f"session {session_id!r} is attached to an open stream: end that stream first")
        self._free(session)

    def close_all(self) -> None:
        for session in list(self._named.values()):
            self._free(session)

    def _open(self, model: Model, session_id: str) -> Session:
        if session_id in self._named:
            raise AlreadyExists(f"session {session_id!r} already exists: set resume to continue it, or choose another id")
        session = Session(session_id or uuid.uuid4().hex, model, model.runtime.allocate(), named=bool(session_id))
        if session.named:
            self._named[session.id] = session
        return session

    def _resume(self, model: Model, session_id: str) -> Session:
        session = self._named.get(session_id) if session_id else None
        if session is None:
            raise NotFound(self._unknown(session_id))
        if session.model is not model:
            card = session.model.card
            raise FailedPrecondition(f"session {session_id!r} belongs to model {card.name!r} version {card.version}")
        if session.attached:
            raise FailedPrecondition(f"session {session_id!r} is attached to another open stream")
        if session.expiry is not None:
            session.expiry.cancel()
        session.attached = True
        return session

    def _detach(self, session: Session) -> None:
        session.attached = False
        if not session.named:
            self._free(session)
        elif session.id in self._named:
            session.expiry = asyncio.get_running_loop().call_later(self._ttl_s, self._expire, session)

    def _expire(self, session: Session) -> None:
        if not session.attached and self._named.get(session.id) is session:
            self._free(session)

    def _free(self, session: Session) -> None:
        self._named.pop(session.id, None)
        if session.expiry is not None:
            session.expiry.cancel()
        session.model.batcher.free(session.slot)

    def _unknown(self, session_id: str) -> str:
        if not session_id:
            return "resume needs a session_id"
        return f"session {session_id!r} is unknown or expired (named sessions expire after {self._ttl_s:g} s without a stream)"
