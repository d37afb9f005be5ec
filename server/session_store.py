"""What the session registry asks of a state store, given to it at construction: the Redis store
(server/store.py), or for a server without one the null store, which keeps nothing and holds everything."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rnnserve.server.sessions import Session


class SessionStore(Protocol):
    keeps_sessions: bool  # sessions outlive this process in it: there is something to release and forget

    async def claim(self, session: Session) -> None:
        """This server's hold on a session it is about to serve; FAILED_PRECONDITION when another server has it."""

    async def confirm(self, session: Session) -> None:
        """Before an answer of the session leaves: UNAVAILABLE when this server has lost its hold on it."""

    def answered(self, session: Session) -> None:
        """A message of the session was answered: its state is to be written."""

    async def release(self, session: Session) -> None:
        """Its stream here has ended: another server may take it."""

    async def forget(self, session: Session) -> None:
        """It ended: its state and hold leave the store."""

    async def newer_than(self, session: Session) -> bool:
        """Whether the store has a later state of it than this copy."""

    async def load(self, key: str) -> tuple[bytes, bytes] | None:
        """(blob, mark) stored under `key`, or None."""

    async def drain(self, sessions: list[Session]) -> None:
        """Writes every live one (at shutdown)."""

    async def close(self) -> None: ...


class NullStore:
    """No store: sessions live in this process only, and it holds every one it serves."""

    keeps_sessions = False

    async def claim(self, session: Session) -> None:
        pass

    async def confirm(self, session: Session) -> None:
        pass

    def answered(self, session: Session) -> None:
        pass

    async def release(self, session: Session) -> None:
        pass

    async def forget(self, session: Session) -> None:
        pass

    async def newer_than(self, session: Session) -> bool:
        return False

    async def load(self, key: str) -> tuple[bytes, bytes] | None:
        return None

    async def drain(self, sessions: list[Session]) -> None:
        pass

    async def close(self) -> None:
        pass


def store_key(key: tuple) -> str:
    """A session's key here as its key in the state store: "session:ID" or "sequence:MODEL:ID", after its principal's
    hash when it has one."""
    kind, principal, *name = key
    owner = f"by:{hashlib.sha256(principal.encode()).hexdigest()[:16]}:" if principal else ""
    return owner + ":".join((kind, *name))
