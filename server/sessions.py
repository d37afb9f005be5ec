"""Sessions: a sequence's claim on a slot of its model's state slab, from open to close or expiry.

An ephemeral session lives as long as its call. A named session outlives its stream for an idle TTL so a later
stream can resume it; at most one stream is attached to it at a time. A KServe sequence is a named session keyed by
its model and sequence id: `sequence_start` opens it, `sequence_end` or the idle TTL ends it, and one request at a
time is attached to it.

Sessions that outlive a call belong to the principal that made them (server/security.py): their ids are namespaced
by it, so another caller neither finds nor squats them — someone else's session is NOT_FOUND, in the words a
never-made id gets, so ids cannot be probed — and only an operator may act on anyone's.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np

from rnnserve.server.engine_jobs import StepResult
from rnnserve.server.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ServeError
from rnnserve.server.repository import Model
from rnnserve.server.security import caller
from rnnserve.server.session_store import NullStore, SessionStore, store_key
from rnnserve.server.snapshots import Snapshot, Snapshots
from rnnserve.text import IncrementalDecoder

REMEMBERED_ENDINGS = 10_000  # ended ids kept to tell a client why its session or sequence is gone
WHY_GONE = {
    "expired": "expired: it was idle longer than {ttl:g} s (--session-ttl-s)",
    "end": "has ended (a request carried sequence_end)",
    "restarted": "was started again",
    "stream_closed": "was ended when the ModelStreamInfer stream that started it closed",
    "closed": "was closed",
    "lost": "was taken over by another server (its hold here ran out): resume it there, or here once that one lets go",
}


@dataclass(eq=False)
class Session:
    id: str
    model: Model
    slot: int
    kind: str  # "call" (lives as long as one call), "named" (a native session id), "sequence" (a KServe sequence)
    key: tuple | None = None  # among the sessions that outlive a call: ("session", principal, id) or ("sequence", principal, model, id)
    owner: object = None  # the stream whose end ends this sequence, if one started it
    position: int = 0  # steps consumed since creation or the last reset
    replay_until: int = 0  # a resuming client had answers up to here: the steps before it are ones it sends again
    store_mark: bytes | None = None  # loaded from a state store: the mark ("position writer") it was loaded at
    epoch: int = 0  # with a state store: the fencing token of this server's hold on it (0: none yet)
    held_until: float = 0.0  # time.monotonic() until which the hold is known to be this server's
    lost: bool = False  # another server has taken it: this one answers nothing more of it
    attached: bool = True
    live: bool = True  # false once it has ended: its slot may be another session's
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)  # armed while idle, re-armed as it fires
    idle_since: float = 0.0  # loop time of its last detach: the idle TTL counts from here
    decoder: IncrementalDecoder | None = field(default=None, repr=False)  # Stream: input read so far, to whole characters
    waiting: np.ndarray | None = field(default=None, repr=False)  # an audio model's samples that do not fill a step yet
    last_log_probs: np.ndarray | None = field(default=None, repr=False)  # a scoring stream's last step's, for its next token

    @property
    def ids(self) -> tuple[str, str]:
        """(session id, sequence id) as a client names it: a named session's id, or a KServe sequence's id."""
        return (self.key[2], "") if self.kind == "named" else ("", self.key[3]) if self.kind == "sequence" else ("", "")

    @property
    def described(self) -> str:
        """The session as messages name it: "session 'talk-1'", or a sequence's "sequence 7 of model 'lstm'"."""
        return self.id if self.kind == "sequence" else f"session {self.id!r}"

    async def step(self, tokens: list[int], top_k: int = 0) -> StepResult:
        """The outputs after each of `tokens` (logits [T, V] and the model's extra outputs, e.g. attention [T, S]),
        continuing this session's state; with `top_k`, each step's k most probable outputs."""
        result = await self.model.batcher.step(self.slot, tokens, top_k)
        self.stepped(len(tokens))
        return result

    def stepped(self, steps: int) -> None:
        """This session's state has gone `steps` further (here, or in a step run with other sessions')."""
        if self.position < self.replay_until:
            self.model.metrics.chunk_replayed()
        self.position += steps

    async def encode(self, inputs: dict[str, np.ndarray]) -> None:
        """Sets this session's initial state from a request (a class label, a source text) with the model's encoder."""
        await self.model.batcher.encode(self.slot, inputs)

    def reset(self) -> None:
        self.model.batcher.reset(self.slot)
        self.position = self.replay_until = 0
        self.decoder = self.waiting = self.last_log_probs = None

    @property
    def pending(self) -> bytes:
        """Input read but not yet stepped, as a snapshot keeps it: a character's first bytes, or an audio model's
        samples (float32) that do not fill a step."""
        if self.model.card.input.values:
            return b"" if self.waiting is None else self.waiting.astype("<f4").tobytes()
        return self.decoder.pending() if self.decoder else b""


def sequence_key(model: Model, sequence_id: str) -> tuple[tuple[str, str, str, str], str]:
    """A KServe sequence of the current caller's: its key among the sessions, and its name in messages."""
    return ("sequence", caller().principal, model.card.name, sequence_id), f"sequence {sequence_id} of model {model.card.name!r}"


def session_key(session_id: str) -> tuple[str, str, str]:
    """A named session of the current caller's: its key among the sessions."""
    return ("session", caller().principal, session_id)


_tasks: set[asyncio.Task] = set()


def _background(coroutine) -> None:
    """Runs store work without making the call wait (the task is kept until it is done)."""
    task = asyncio.get_running_loop().create_task(coroutine)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class SessionRegistry:
    def __init__(self, ttl_s: float, snapshots: Snapshots, store: SessionStore | None = None):
        """`snapshots` turns sessions into blobs and back; `store`, where they outlive the process (none: NullStore)."""
        self._ttl_s = ttl_s
        self._snapshots = snapshots
        self.store: SessionStore = store or NullStore()
        self._named: dict[tuple, Session] = {}  # sessions that outlive a call: native ids and KServe sequences
        self._ended: OrderedDict[tuple, str] = OrderedDict()  # recently ended keys → why

    @asynccontextmanager
    async def attach(self, model: Model, session_id: str = "", resume: bool = False, create: bool = False):
        """A session for the duration of one call: created, or resumed by id (from the state store, when it is not
        live here), or with `create` resumed if it exists and created if not; always detached at the end."""
        source = await self._refresh(session_key(session_id)) if resume and session_id else "local"
        if create and self._lookup(session_key(session_id)) is None:
            resume = False
        session = self._resume(model, session_id) if resume else self._open(model, session_id)
        if resume:
            model.metrics.resumed(source)
        try:
            await self._claim(session)
            yield session
        finally:
            self._detach(session)

    def answered(self, session: Session) -> None:
        """A message of the session was answered: the store, if there is one, gets its new state."""
        self.store.answered(session)

    async def confirm(self, session: Session) -> None:
        """Before an answer of the session leaves: UNAVAILABLE, telling the client to resume, when another server has
        taken it (this server's hold on it ran out, or the store forgot it and gave it to another)."""
        if session.key is not None and self.store.keeps_sessions:
            await self.store.confirm(session)

    async def confirm_all(self, sessions: list[Session]) -> list[ServeError | None]:
        """`confirm` for many sessions answered together: each one's refusal, or None."""
        errors: list[ServeError | None] = [None] * len(sessions)
        for index, session in enumerate(sessions):
            if session.key is not None:
                try:
                    await self.store.confirm(session)
                except ServeError as err:
                    errors[index] = err
        return errors

    def live_sessions(self) -> list[Session]:
        return list(self._named.values())

    async def _refresh(self, key: tuple) -> str:
        """With a state store, a session about to be resumed is the store's latest: loaded when it is not live here,
        reloaded when another server wrote the store's state (it served the session after this copy was made).
        Where its state now comes from: "store" (loaded) or "local"."""
        if not self.store.keeps_sessions:
            return "local"
        local = self._lookup(key)
        if local is not None:
            if local.attached or not await self.store.newer_than(local):
                return "local"
            self._free(local, "superseded")
        stored = await self.store.load(store_key(key))
        if stored is None:
            return "local"
        blob, mark = stored
        session = await self.restore(self._snapshots.read(blob))
        session.store_mark = mark  # the state it was loaded from: not newer than itself
        return "store"

    async def _claim(self, session: Session) -> None:
        if session.key is not None and self.store.keeps_sessions:
            await self.store.claim(session)

    async def open_sequence(self, model: Model, sequence_id: str, start: bool, owner: object = None, position: int | None = None) -> Session:
        """A KServe sequence, attached to one request until `close_sequence`. `start` opens it (afresh, if it is live);
        without `start` it must be live. `position`: where the client says it is; one that is elsewhere is refused
        and left as it is, for the client to catch up. (Two calls rather than an async context manager, whose
        generator KServe would pay for on every request.)"""
        key, name = sequence_key(model, sequence_id)
        if not start and await self._refresh(key) == "store":
            model.metrics.resumed("store")  # a sequence's requests go on locally without counting as resumes
        session = self._attach_sequence(model, key, name, start, owner, position)
        try:
            await self._claim(session)
        except BaseException:
            self._detach(session)
            raise
        return session

    def open_sequence_now(self, model: Model, sequence_id: str, start: bool, owner: object = None, position: int | None = None) -> Session:
        """`open_sequence` without waiting, where there is nothing to wait for: without a state store (which may hold a
        newer state, and must give this server its hold)."""
        assert not self.store.keeps_sessions
        key, name = sequence_key(model, sequence_id)
        return self._attach_sequence(model, key, name, start, owner, position)

    def open_sequences_now(self, model: Model, sequence_ids: list[str], starts: list[bool], owners: list) -> tuple[list[Session | None], list[tuple[int, ServeError]]]:
        """`open_sequence_now` for many requests at once (the native front end's plain steps): each row's session, or
        None where it is refused, and the refusals as (row, error). The common row, an idle live sequence of this
        model going on, costs a lookup; any other goes the way `open_sequence_now` goes."""
        assert not self.store.keeps_sessions
        principal, name, named = caller().principal, model.card.name, self._named
        sessions: list[Session | None] = []
        refused: list[tuple[int, ServeError]] = []
        for row, (sequence_id, start, owner) in enumerate(zip(sequence_ids, starts, owners)):
            key = ("sequence", principal, name, sequence_id)
            session = None if start else named.get(key)
            if session is not None and not session.attached and session.model is model:
                session.attached = True
            else:
                try:
                    session = self._attach_sequence(model, key, f"sequence {sequence_id} of model {name!r}", start, owner, None)
                except ServeError as err:
                    refused.append((row, err))
                    session = None
            sessions.append(session)
        return sessions, refused

    def close_sequences(self, sessions: list[Session], ends: list[bool], steps: int) -> list[int]:
        """`close_sequence` for many requests at once, after each stepped `steps` further (0: its step failed); each
        sequence's position."""
        positions = []
        for session, end in zip(sessions, ends):
            if steps:
                session.stepped(steps)
            positions.append(session.position)
            if end:
                self._free(session, "end")
            else:
                self._detach(session)
        return positions

    def _attach_sequence(self, model: Model, key: tuple, name: str, start: bool, owner: object, position: int | None) -> Session:
        session = self._named.get(key) if start else self._lookup(key)  # a start is always the caller's own
        if session is not None and session.attached:
            raise FailedPrecondition(
                f"{name} has a request in progress: send a sequence's requests one after another "
                "(on one ModelStreamInfer stream they are run in order)"
            )
        if start:
            if session is not None:
                self._free(session, "restarted")
            session = self._create(model, name, "sequence", key, owner)
        else:
            if session is None:
                raise NotFound(f"{name} {self._why_gone(key, 'was never started')}: start it with sequence_start")
            if position is not None and position != session.position:
                session.replay_until = max(session.replay_until, position)  # what it sends next, up to there, is a replay
                raise FailedPrecondition(f"{name} is at position {session.position}, not {position}: " + (
                    "it lacks requests this client had answered (did their server stop before the state store had them?): "
                    f"send its requests from position {session.position} again" if position > session.position else
                    "it has consumed requests whose answers did not reach this client"
                ))
            self._attach(session, model, name)
        return session

    def close_sequence(self, session: Session, end: bool) -> None:
        """The request is done: `end` ends the sequence; otherwise it waits, idle, for its next request."""
        if end:
            self._free(session, "end")
        else:
            self._detach(session)

    def live_sequence(self, model: Model, sequence_id: str) -> Session:
        """A KServe sequence that is live (NOT_FOUND, saying why, when it is not)."""
        key, name = sequence_key(model, sequence_id)
        session = self._lookup(key)
        if session is None:
            raise NotFound(f"{name} {self._why_gone(key, 'was never started')}")
        return session

    async def restore(self, snapshot: Snapshot, session_id: str = "", sequence_id: str = "") -> Session:
        """A new named session (or KServe sequence) of the caller's holding a snapshot's state, under the id it had
        unless given one, waiting for a stream (or request) to resume it within the TTL."""
        header, model = snapshot.header, snapshot.model
        if not session_id and not sequence_id:
            session_id, sequence_id = header["session_id"], header["sequence_id"]
        session = await self._restored(
            model, session_id, sequence_id, header["position"], bytes.fromhex(header["pending"]),
            lambda slot: model.batcher.write_state(slot, snapshot.state),
        )
        model.metrics.snapshot_restored()
        return session

    async def fork(self, session: Session, session_id: str = "", sequence_id: str = "") -> Session:
        """A copy under a new id (a new named session id is made up when none is given)."""
        if not session_id and not sequence_id:
            session_id = uuid.uuid4().hex
        return await self.restore(self._snapshots.read(await self._snapshots.snapshot(session)), session_id, sequence_id)

    async def _restored(self, model: Model, session_id: str, sequence_id: str, position: int, pending: bytes, write) -> Session:
        """`write(slot)` puts the state into the new session's slot."""
        if sequence_id:
            (key, name), kind = sequence_key(model, sequence_id), "sequence"
        else:
            key, name, kind = session_key(session_id), session_id, "named"
        if key in self._named:
            raise AlreadyExists(f"{self._named[key].described} is live: close or end it first, or restore under another id")
        session = self._create(model, name, kind, key)
        session.position = position
        if model.card.input.values:
            session.waiting = np.frombuffer(pending, "<f4").copy() if pending else None
        else:
            session.decoder = IncrementalDecoder(model.tokenizer, pending) if pending else None
        try:
            await write(session.slot)
        except BaseException:
            self._free(session, "closed")
            raise
        self._detach(session)
        return session

    def end_owned_by(self, owner: object) -> None:
        """Ends the sequences a closing stream started and left open (`owner`: an object, or the native front end's
        number for the call)."""
        for session in [s for s in self._named.values() if s.owner is not None and s.owner == owner]:
            self._free(session, "stream_closed")

    def close(self, session_id: str) -> None:
        session = self.named(session_id)
        if session.attached:
            raise FailedPrecondition(f"session {session_id!r} is attached to an open stream: end that stream first")
        self._free(session, "closed")

    def named(self, session_id: str) -> Session:
        """A live named session (NOT_FOUND when there is none by that name)."""
        if not session_id:
            raise InvalidArgument("session_id", "name the session")
        session = self._lookup(session_key(session_id))
        if session is None:
            raise NotFound(self._unknown(session_id))
        return session

    def close_all(self) -> None:
        for session in list(self._named.values()):
            self._free(session, "shutdown")

    def _open(self, model: Model, session_id: str) -> Session:
        if session_key(session_id) in self._named:
            raise AlreadyExists(f"session {session_id!r} already exists: set resume to continue it, or choose another id")
        if session_id:
            return self._create(model, session_id, "named", session_key(session_id))
        return self._create(model, uuid.uuid4().hex, "call")

    def _create(self, model: Model, session_id: str, kind: str, key: tuple | None = None, owner: object = None) -> Session:
        session = Session(session_id, model, model.batcher.allocate(owner), kind, key, owner=owner)
        if key is not None:
            self._named[key] = session
            self._ended.pop(key, None)
        model.metrics.session_started(kind)
        return session

    def _resume(self, model: Model, session_id: str) -> Session:
        if not session_id:
            raise InvalidArgument("start.session_id", "resume continues a named session: set session_id to its name")
        session = self._lookup(session_key(session_id))
        if session is None:
            raise NotFound(self._unknown(session_id))
        if session.attached:
            raise FailedPrecondition(f"session {session_id!r} is attached to another open stream")
        self._attach(session, model, f"session {session_id!r}")
        return session

    def _attach(self, session: Session, model: Model, name: str) -> None:
        if session.model is not model:
            card = session.model.card
            raise FailedPrecondition(f"{name} belongs to model {card.name!r} version {card.version}")
        session.attached = True  # its expiry timer, if armed, finds it attached or idle again and waits on

    def _detach(self, session: Session) -> None:
        """A session that outlives its call waits for the next, for the idle TTL. One timer per idle period, not
        per request: a sequence's requests come far faster than its TTL, and KServe pays this for every one."""
        session.attached = False
        if session.key is None:
            self._free(session, "end")
        elif session.lost:  # another server serves it now: this copy is stale
            self._free(session, "lost")
        elif self._named.get(session.key) is session:
            loop = asyncio.get_running_loop()
            session.idle_since = loop.time()
            if session.expiry is None:
                session.expiry = loop.call_later(self._ttl_s, self._expire, session)
            if self.store.keeps_sessions:
                _background(self.store.release(session))  # another server may take it over now

    def _expire(self, session: Session) -> None:
        """Ends a session idle for the TTL; one that was served since its timer was armed waits on, for the rest."""
        session.expiry = None
        if self._named.get(session.key) is not session:
            return
        if session.attached:  # it is armed again when this call detaches
            return
        loop = asyncio.get_running_loop()
        left = session.idle_since + self._ttl_s - loop.time()
        if left > 0:
            session.expiry = loop.call_later(left, self._expire, session)
        else:
            self._free(session, "expired")

    def _free(self, session: Session, reason: str) -> None:
        if session.key is not None:
            if self._named.get(session.key) is not session:
                return  # already freed
            del self._named[session.key]
            self._ended[session.key] = reason
            if len(self._ended) > REMEMBERED_ENDINGS:
                self._ended.popitem(last=False)
        if session.expiry is not None:
            session.expiry.cancel()
            session.expiry = None
        session.live = False
        if self.store.keeps_sessions and session.key is not None and reason not in ("expired", "shutdown", "superseded", "lost"):
            # expired: its key in the store expires too; shutdown: kept for other servers; superseded: the store's is
            # newer; lost: the store is another server's to write
            _background(self.store.forget(session))
        session.model.batcher.free(session.slot)
        session.model.metrics.session_ended(session.kind, reason)

    def _lookup(self, key: tuple) -> Session | None:
        """The live session under `key`; for an operator, also another principal's of that kind and id, when there is
        exactly one."""
        session = self._named.get(key)
        if session is None and caller().operator:
            others = [s for k, s in self._named.items() if k[0] == key[0] and k[2:] == key[2:]]
            session = others[0] if len(others) == 1 else None
        return session

    def _why_gone(self, key: tuple, otherwise: str) -> str:
        reason = self._ended.get(key)
        return WHY_GONE[reason].format(ttl=self._ttl_s) if reason in WHY_GONE else otherwise

    def _unknown(self, session_id: str) -> str:
        return f"session {session_id!r} is unknown or expired (named sessions expire after {self._ttl_s:g} s without a stream)"
