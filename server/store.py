"""A shared state store (`--state-store redis://HOST:PORT/DB`): named sessions and KServe sequences outlive their
process. After each answered message a session's snapshot is written to Redis: in the background, so the answer is
not delayed, and in batches (one round trip for every session answered since the last write, at most one write
per `--state-write-interval-ms`; a session's latest state wins), stamped with its position and expiring with
`--session-ttl-s`. A resume that finds no live session here restores it from the store, so a stream can continue on
any process or replica. A lease in the store lets one server at a time hold a session. On SIGTERM every live
session is written before the process exits.

The store never takes a live session down: when Redis cannot be reached, the server goes on serving from memory,
says so in its logs, metrics and health details, and writes again once Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
import weakref

from rnnserve.server.errors import FailedPrecondition
from rnnserve.server.metrics import Metrics
from rnnserve.server.sessions import Session, store_key
from rnnserve.server.snapshots import Snapshots

log = logging.getLogger(__name__)

PREFIX = "rnnserve:"
RENEW_IF_HOLDER = """
if redis.call('get', KEYS[1]) == ARGV[1] or redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('pexpire', KEYS[1], ARGV[2])
    return 1
end
return 0
"""
RELEASE_IF_HOLDER = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def key_of(session: Session) -> str:
    return PREFIX + store_key(session.key)


class StateStore:
    """Sessions' snapshots and leases in Redis."""

    def __init__(self, url: str, ttl_s: float, lease_s: float, interval_s: float, snapshots: Snapshots, metrics: Metrics,
                 on_health=None):
        """`on_health(up)` is told when the store stops or starts taking writes (the health service reports it)."""
        import redis.asyncio as redis  # the store extra: pip install 'rnnserve[store]'

        self._redis = redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._url = url
        self._ttl_ms = int(ttl_s * 1000)
        self._lease_ms = int(lease_s * 1000)
        self._interval_s = interval_s
        self._last_write = 0.0  # when the last write began (time.monotonic)
        self._snapshots = snapshots
        self._metrics = metrics
        self.holder = uuid.uuid4().hex  # this process, as a lease holder
        self.degraded = ""  # why the last write failed; "" while the store is healthy
        self._on_health = on_health or (lambda up: None)
        self._dirty: dict[Session, None] = {}  # answered since their last write, in order
        self._writer: asyncio.Task | None = None
        self._renewed: weakref.WeakKeyDictionary[Session, float] = weakref.WeakKeyDictionary()  # when each lease was renewed
        metrics.store_up.set(1)
        self._renew = self._redis.register_script(RENEW_IF_HOLDER)
        self._release = self._redis.register_script(RELEASE_IF_HOLDER)

    # writing

    def answered(self, session: Session) -> None:
        """After a message of a named session or sequence is answered: its state is written in the background."""
        if session.kind not in ("named", "sequence"):
            return
        self._dirty[session] = None
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())

    async def _write_all(self) -> None:
        """Writes every session answered since the last write, in one round trip to Redis; those answered meanwhile
        go in the next one, no sooner than the interval after it began (so a busy server writes in batches, and a
        session's latest state always wins)."""
        while self._dirty:
            if (wait := self._last_write + self._interval_s - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            self._last_write = time.monotonic()
            sessions = [s for s in self._dirty if s.live]  # ended meanwhile: its slot may be someone else's
            self._dirty.clear()
            taken = await asyncio.gather(*(self._capture(s) for s in sessions), return_exceptions=True)
            await self._put([(s, t) for s, t in zip(sessions, taken) if not isinstance(t, BaseException) and s.live])

    async def _capture(self, session: Session) -> tuple[bytes, int]:
        blob = await self._snapshots.snapshot(session)
        return blob, session.position  # what the blob holds: nothing of the session ran between the read and now

    async def _put(self, captured: list[tuple[Session, tuple[bytes, int]]]) -> None:
        if not captured:
            return
        began = time.perf_counter()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                now = time.monotonic()
                for session, (blob, position) in captured:
                    key = key_of(session)
                    pipe.set(key, blob, px=self._ttl_ms)
                    pipe.set(key + ":position", f"{position} {self.holder}", px=self._ttl_ms)  # where, and who wrote it
                    if now - self._renewed.get(session, 0.0) > self._lease_ms / 3000:  # a third of the lease: renew
                        await self._renew(keys=[key + ":lease"], args=[self.holder, self._lease_ms], client=pipe)
                        self._renewed[session] = now
                await pipe.execute()
        except Exception as err:  # the store is down or slow: serve from memory, say so, try again next time
            self._failed("write", err, len(captured))
            return
        self._metrics.store_latency.observe(time.perf_counter() - began)
        self._metrics.store_writes.labels("ok").inc(len(captured))
        self._metrics.store_up.set(1)
        if self.degraded:
            log.warning("state store %s is back: writing sessions again", self._url)
            self.degraded = ""
            self._on_health(True)

    async def _written(self) -> None:
        """Until the writes under way (and those they were followed by) are done."""
        while self._writer is not None and not self._writer.done():
            await asyncio.gather(self._writer, return_exceptions=True)

    def _failed(self, what: str, err: Exception, count: int = 1) -> None:
        if what == "write":
            self._metrics.store_writes.labels("failed").inc(count)
            self._metrics.store_up.set(0)
        if not self.degraded:
            log.error("state store %s: %s failed (%s): serving from memory until it is back", self._url, what, err)
            self._on_health(False)
        self.degraded = f"{what} failed: {err}"

    async def drain(self, sessions: list[Session]) -> None:
        """Writes every live named session and sequence (at shutdown), after the writes already under way."""
        for session in sessions:
            if session.live:
                self.answered(session)
        await self._written()

    async def forget(self, session: Session) -> None:
        """A session that ended (closed, sequence_end): its state and lease leave the store."""
        try:
            await self._redis.delete(key_of(session), key_of(session) + ":position")
            await self._release(keys=[key_of(session) + ":lease"], args=[self.holder])
        except Exception as err:
            self._failed("delete", err)

    # reading

    async def claim(self, session: Session) -> None:
        """The lease on a session this server is about to serve; FAILED_PRECONDITION when another server holds it."""
        key = key_of(session) + ":lease"
        try:
            held = await self._renew(keys=[key], args=[self.holder, self._lease_ms])
        except Exception as err:  # no store: nobody else can be checked, so this server serves it
            self._failed("lease", err)
            return
        if not held:
            raise FailedPrecondition(
                f"{session.described} is being served by another server: end that stream first (its lease expires "
                f"{self._lease_ms / 1000:g} s after that server stops)"
            )

    async def release(self, session: Session) -> None:
        """Lets another server take the session (its stream here has ended), once its last state is written."""
        await self._written()
        try:
            await self._release(keys=[key_of(session) + ":lease"], args=[self.holder])
        except Exception as err:
            self._failed("release", err)

    async def newer_than(self, session: Session) -> bool:
        """Whether the store holds a later state of the session than this copy: one another server wrote since the
        copy was loaded (this server's own writes may lag its copy, never lead it)."""
        try:
            mark = await self._redis.get(key_of(session) + ":position")
        except Exception as err:
            self._failed("read", err)
            return False
        return mark is not None and mark.decode().partition(" ")[2] != self.holder and mark != session.store_mark

    async def load(self, key: str) -> bool:
        """Restores the session stored under `key` here (detached, for a resume to attach); False when the store
        does not have it (or cannot be reached)."""
        try:
            blob, mark = await self._redis.mget(PREFIX + key, PREFIX + key + ":position")
        except Exception as err:
            self._failed("read", err)
            return False
        self._metrics.store_reads.labels("found" if blob is not None else "missing").inc()
        if blob is None:
            return False
        session = await self._snapshots.restore(blob)
        session.store_mark = mark  # the state it was loaded from: not newer than itself
        return True

    async def close(self) -> None:
        await self._redis.aclose()
