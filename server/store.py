"""A shared state store (`--state-store redis://HOST:PORT/DB`): named sessions and KServe sequences outlive their
process. After each answered message a session's snapshot is written to Redis: in the background, so the answer is
not delayed, and in batches (one round trip for every session answered since the last write, at most one write
per `--state-write-interval-ms`; a session's latest state wins), stamped with its position and expiring with
`--session-ttl-s`. A resume that finds no live session here restores it from the store, so a stream can continue on
any process or replica. On SIGTERM every live session is written before the process exits.

One server at a time serves a session, and the store is fenced, not just leased. A server that takes a session gets
its epoch (a counter in Redis, raised by every take) and holds a lease on it, `--state-lease-s` long, renewed by
every write and, while its stream is open, every third of a lease. Every write and renewal is a script that runs
only while the lease is still this server's at its epoch — or, when the lease has lapsed, while nobody has taken
the session since (the epoch is still its own, or the store forgot it). A server that lost a session (it was paused
past its lease, or another took it meanwhile) learns it at its next write or renewal, and answers nothing more of
it: before an answer leaves, a hold older than a lease is confirmed first, and the stream ends with UNAVAILABLE,
telling the client to resume. A Redis that restarts empty has forgotten every lease: the first server to use it
again marks it, and for a full lease after that no server takes a session, so that those still holding one renew
their hold before anyone else can take it.

The store never takes a live session down for being unreachable: the server goes on serving from memory, says so
in its logs, metrics and health details, and writes again once Redis is back. (A server cut off from a Redis that
others still reach could then serve a session another has taken: fencing needs the store.)
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from rnnserve.server.errors import FailedPrecondition, Unavailable
from rnnserve.server.metrics import Metrics
from rnnserve.server.session_store import store_key
from rnnserve.server.sessions import Session
from rnnserve.server.snapshots import Snapshots

log = logging.getLogger(__name__)

PREFIX = "rnnserve:"
MARKER = PREFIX + "store"  # made by the first server to use a store; a Redis that restarted empty lacks it
SETTLING = PREFIX + "settling"  # for a lease after the marker is made, no session is taken
# KEYS: lease, epoch, marker, settling. ARGV: holder, lease ms, ttl ms. The epoch taken (or already held), -1 when
# another server holds it, -1 - ms when the store is settling (retry after ms)
CLAIM = """
local lease = redis.call('get', KEYS[1])
if lease then
    local holder, epoch = string.match(lease, '^(%S+) (%d+)$')
    if holder == ARGV[1] then
        redis.call('pexpire', KEYS[1], ARGV[2])
        return tonumber(epoch)
    end
    return -1
end
if redis.call('set', KEYS[3], '1', 'NX') then
    redis.call('set', KEYS[4], '1', 'PX', ARGV[2])
end
local wait = redis.call('pttl', KEYS[4])
if wait > 0 then
    return -1 - wait
end
local epoch = redis.call('incr', KEYS[2])
redis.call('pexpire', KEYS[2], ARGV[3])
redis.call('set', KEYS[1], ARGV[1] .. ' ' .. epoch, 'PX', ARGV[2])
return epoch
"""
# KEYS: lease, epoch, blob, position. ARGV: holder, epoch, lease ms, ttl ms, blob ('' to renew only), position mark.
# 1 when this server still holds the session (and the blob is written), 0 when another has taken it
HOLD = """
local mine = ARGV[1] .. ' ' .. ARGV[2]
local lease = redis.call('get', KEYS[1])
if lease ~= mine then
    if lease then
        return 0
    end
    local epoch = redis.call('get', KEYS[2])
    if epoch and epoch ~= ARGV[2] then
        return 0
    end
    redis.call('set', KEYS[2], ARGV[2], 'PX', ARGV[4])
end
redis.call('set', KEYS[1], mine, 'PX', ARGV[3])
if ARGV[5] ~= '' then
    redis.call('set', KEYS[3], ARGV[5], 'PX', ARGV[4])
    redis.call('set', KEYS[4], ARGV[6], 'PX', ARGV[4])
    redis.call('pexpire', KEYS[2], ARGV[4])
end
return 1
"""
WATCH_INTERVAL_S = 1.0
RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


def key_of(session: Session) -> str:
    return PREFIX + store_key(session.key)


class StateStore:
    """Sessions' snapshots, epochs and leases in Redis."""

    keeps_sessions = True

    def __init__(self, url: str, ttl_s: float, lease_s: float, interval_s: float, snapshots: Snapshots, metrics: Metrics,
                 on_health=None):
        """`on_health(up)` is told when the store stops or starts answering (the health service reports it)."""
        import redis.asyncio as redis  # the store extra: pip install 'rnnserve[store]'
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as Disconnected

        # a connection that Redis dropped (it restarted) is retried once on a new one; a timeout is not retried (a
        # paused Redis would make every call wait twice)
        self._redis = redis.from_url(
            url, socket_timeout=2.0, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 1, supported_errors=(Disconnected,)),
            retry_on_error=[Disconnected],
        )
        self._url = url
        self._ttl_ms = int(ttl_s * 1000)
        self._lease_s = lease_s
        self._lease_ms = int(lease_s * 1000)
        self._interval_s = interval_s
        self._last_write = 0.0  # when the last write began (time.monotonic)
        self._snapshots = snapshots
        self._metrics = metrics
        self.holder = uuid.uuid4().hex  # this process, as a lease holder
        self.degraded = ""  # why the last round trip failed; "" while the store answers
        self._failures = 0  # round trips failed in a row: health turns NOT_SERVING at the second
        self._on_health = on_health or (lambda up: None)
        self._dirty: dict[Session, None] = {}  # answered since their last write, in order
        self._writer: asyncio.Task | None = None
        self._held: dict[Session, None] = {}  # claimed and attached here: renewed while their stream is open
        self._renewer: asyncio.Task | None = None
        metrics.store_up.set(1)
        self._watcher = asyncio.create_task(self._watch())  # the health reflects the store, busy or idle
        self._claim = self._redis.register_script(CLAIM)
        self._hold = self._redis.register_script(HOLD)
        self._release = self._redis.register_script(RELEASE)

    # holding

    async def claim(self, session: Session) -> None:
        """This server's hold on a session it is about to serve: FAILED_PRECONDITION when another server holds it.
        While the store settles (it is new, or came back empty), the claim waits for it."""
        key = key_of(session)
        while True:
            began = time.monotonic()
            try:
                epoch = await self._claim(keys=[key + ":lease", key + ":epoch", MARKER, SETTLING],
                                          args=[self.holder, self._lease_ms, self._ttl_ms])
            except Exception as err:  # no store: nobody else can be checked, so this server serves it
                self._failed("lease", err)
                return
            self._succeeded()
            if epoch >= 0:
                break
            if epoch == -1:
                raise FailedPrecondition(
                    f"{session.described} is being served by another server: end that stream first (its lease expires "
                    f"{self._lease_s:g} s after that server stops)"
                )
            log.info("state store %s is new or came back empty: no session is taken for %.1f s more, so that a server "
                     "still holding one renews it first", self._url, (-1 - epoch) / 1000)
            await asyncio.sleep((-1 - epoch) / 1000)
        session.epoch, session.held_until, session.lost = epoch, began + self._lease_s, False
        self._held[session] = None
        if self._renewer is None or self._renewer.done():
            self._renewer = asyncio.create_task(self._renew_held())

    async def confirm(self, session: Session) -> None:
        """Before an answer of the session leaves: UNAVAILABLE once this server has lost it. A hold older than a lease
        is renewed first (unless the store is unreachable: then this server serves from memory)."""
        if not session.lost and time.monotonic() >= session.held_until and not self.degraded:
            await self._renew([session])
        if session.lost:
            raise Unavailable(
                f"{session.described} is no longer this server's: another server took it over (this server's hold "
                "on it ran out, or the state store forgot it): resume it, and the server that holds it will answer"
            )

    async def _renew_held(self) -> None:
        """Every third of a lease, renews the hold on every session whose stream is open here."""
        while self._held:
            await asyncio.sleep(self._lease_s / 3)
            held = [s for s in self._held if s.live and s.attached and not s.lost]
            if held:
                await self._renew(held)

    async def _renew(self, sessions: list[Session]) -> None:
        began = time.monotonic()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session in sessions:
                    await self._held_script(pipe, session, b"", b"")
                held = await pipe.execute()
        except Exception as err:
            self._failed("renew", err)
            return
        self._succeeded()
        self._settle_holds(sessions, held, began)

    async def _held_script(self, pipe, session: Session, blob: bytes, mark: bytes) -> None:
        key = key_of(session)
        await self._hold(
            keys=[key + ":lease", key + ":epoch", key, key + ":position"],
            args=[self.holder, session.epoch, self._lease_ms, self._ttl_ms, blob, mark], client=pipe,
        )

    def _settle_holds(self, sessions: list[Session], held: list, began: float) -> None:
        for session, still in zip(sessions, held):
            if still:
                session.held_until = began + self._lease_s
            elif not session.lost:
                session.lost = True
                self._held.pop(session, None)
                self._metrics.store_lost.inc()
                log.warning("state store: %s was taken over by another server; this server (%s) stops serving it",
                            session.described, self.holder[:8])

    # writing

    def answered(self, session: Session) -> None:
        """After a message of a named session or sequence is answered: its state is written in the background."""
        if session.kind not in ("named", "sequence") or session.lost:
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
            sessions = [s for s in self._dirty if s.live and not s.lost]  # ended meanwhile: its slot may be someone else's
            self._dirty.clear()
            taken = await asyncio.gather(*(self._capture(s) for s in sessions), return_exceptions=True)
            await self._put([(s, t) for s, t in zip(sessions, taken) if not isinstance(t, BaseException) and s.live])

    async def _capture(self, session: Session) -> tuple[bytes, int]:
        blob = await self._snapshots.snapshot(session)
        return blob, session.position  # what the blob holds: nothing of the session ran between the read and now

    async def _put(self, captured: list[tuple[Session, tuple[bytes, int]]]) -> None:
        if not captured:
            return
        began, started = time.perf_counter(), time.monotonic()
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session, (blob, position) in captured:
                    await self._held_script(pipe, session, blob, f"{position} {self.holder}".encode())  # where, and who wrote it
                held = await pipe.execute()
        except Exception as err:  # the store is down or slow: serve from memory, say so, try again next time
            self._metrics.store_writes.labels("failed").inc(len(captured))
            self._failed("write", err)
            return
        self._metrics.store_latency.observe(time.perf_counter() - began)
        written = sum(map(bool, held))
        self._metrics.store_writes.labels("ok").inc(written)
        self._metrics.store_writes.labels("refused").inc(len(captured) - written)
        self._succeeded()
        self._settle_holds([s for s, _ in captured], held, started)

    async def _written(self) -> None:
        """Until the writes under way (and those they were followed by) are done."""
        while self._writer is not None and not self._writer.done():
            await asyncio.gather(self._writer, return_exceptions=True)

    async def _watch(self) -> None:
        """Pings the store every WATCH_INTERVAL_S: an idle server notices it go and come back."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                await self._redis.ping()
            except Exception as err:
                self._failed("ping", err)
            else:
                self._succeeded()

    def _succeeded(self) -> None:
        self._failures = 0
        if self.degraded:
            log.warning("state store %s is back: writing sessions again", self._url)
            self.degraded = ""
            self._metrics.store_up.set(1)
            self._on_health(True)

    def _failed(self, what: str, err: Exception) -> None:
        """A round trip failed: the first of a run is logged; the second in a row turns the store's health NOT_SERVING
        (one slow answer does not)."""
        self._failures += 1
        if not self.degraded:
            log.error("state store %s: %s failed (%s): serving from memory until it is back", self._url, what, err)
        self.degraded = f"{what} failed: {err}"
        if self._failures == 2:
            self._metrics.store_up.set(0)
            self._on_health(False)

    async def drain(self, sessions: list[Session]) -> None:
        """Writes every live named session and sequence (at shutdown), after the writes already under way."""
        for session in sessions:
            if session.live:
                self.answered(session)
        await self._written()

    async def forget(self, session: Session) -> None:
        """A session that ended (closed, sequence_end): its state and lease leave the store (its epoch stays, so that
        a server that had it before cannot take it back)."""
        self._held.pop(session, None)
        try:
            await self._redis.delete(key_of(session), key_of(session) + ":position")
            await self._release(keys=[key_of(session) + ":lease"], args=[f"{self.holder} {session.epoch}"])
        except Exception as err:
            self._failed("delete", err)

    async def release(self, session: Session) -> None:
        """Lets another server take the session (its stream here has ended), once its last state is written."""
        await self._written()
        self._held.pop(session, None)
        if session.lost:
            return
        try:
            await self._release(keys=[key_of(session) + ":lease"], args=[f"{self.holder} {session.epoch}"])
        except Exception as err:
            self._failed("release", err)

    # reading

    async def newer_than(self, session: Session) -> bool:
        """Whether the store holds a later state of the session than this copy: one another server wrote since the
        copy was loaded (this server's own writes may lag its copy, never lead it)."""
        try:
            mark = await self._redis.get(key_of(session) + ":position")
        except Exception as err:
            self._failed("read", err)
            return False
        self._succeeded()
        return mark is not None and mark.decode().partition(" ")[2] != self.holder and mark != session.store_mark

    async def load(self, key: str) -> tuple[bytes, bytes] | None:
        """The blob stored under `key` and its mark; None when the store does not have it (or cannot be reached)."""
        try:
            blob, mark = await self._redis.mget(PREFIX + key, PREFIX + key + ":position")
        except Exception as err:
            self._failed("read", err)
            return None
        self._succeeded()
        self._metrics.store_reads.labels("found" if blob is not None else "missing").inc()
        return None if blob is None else (blob, mark)

    async def close(self) -> None:
        self._watcher.cancel()
        if self._renewer is not None:
            self._renewer.cancel()
        await self._redis.aclose()
