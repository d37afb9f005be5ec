"""A named session's stream that survives the server it runs on, for servers that share a state store.

The protocol, for any client: keep every chunk you send, with the position the session was at before it (the
`position` of the previous answer). When the stream breaks, open a new one with `resume`, `acknowledged` set to
the position of the last answer you got, and an empty first message: its answer's `position` is where the restored
state is, and its `behind` how many tokens that is short of `acknowledged` (0: nothing to replay). Drop the kept
chunks that start before `position` (the state has them) and send the rest again, ignoring the answers to the
chunks you had answers for (the server counts them in `rnnserve_replayed_chunks`). The answers then equal those of
a stream that never broke. Through a load balancer, send the session id as the `x-session-id`
metadata so every stream of a session goes to the same server while it lives.
"""

from __future__ import annotations

import queue
import time
from collections import deque
from collections.abc import Callable

import grpc

from rnnserve.client.native import RnnServeClient
from rnnserve.v1 import rnnserve_pb2 as pb

AFFINITY_HEADER = "x-session-id"
RETRY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED)
# the old server's lease has not expired yet, or the session is not in the store yet: wait and try again
WAIT = (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


class ReplayImpossible(RuntimeError):
    """The restored state is older than every chunk this client kept, or newer than the last answer it got."""


class ResumableStream:
    def __init__(self, connect: Callable[[], RnnServeClient], model: str, session_id: str, top_k: int = 0,
                 keep: int = 1024, give_up_s: float = 60.0):
        """`connect` makes a client (through the load balancer); `keep`: how many chunks to keep for replay."""
        self._connect, self._model, self._session_id, self._top_k = connect, model, session_id, top_k
        self._kept: deque[tuple[int, str | list[int]]] = deque(maxlen=keep)  # (position before it, chunk)
        self._give_up_s = give_up_s
        self.position = 0  # after the last answer this client got
        self.replayed = 0  # chunks sent again after a break
        self.resumes = 0
        self._client = self._box = self._answers = None
        self._open(resume=False)

    def send(self, chunk: str | list[int]) -> pb.StreamResponse:
        """Sends one chunk and returns its answer, resuming the session elsewhere if its server goes away."""
        self._kept.append((self.position, chunk))
        try:
            answer = self._exchange(chunk)
        except grpc.RpcError as err:
            if err.code() not in RETRY:
                raise
            answer = self._resume()
        self.position = answer.position
        return answer

    def close(self) -> None:
        if self._box is not None:
            self._box.put(None)
            for _ in self._answers:
                pass
        if self._client is not None:
            self._client.close()

    def _open(self, resume: bool) -> None:
        if self._client is not None:
            self._client.close()
        self._client, self._box = self._connect(), queue.Queue()
        self._answers = self._client.stream(
            self._model, iter(self._box.get, None), session_id=self._session_id, resume=resume, top_k=self._top_k,
            metadata=[(AFFINITY_HEADER, self._session_id)], acknowledged=self.position if resume else 0,
        )

    def _exchange(self, chunk) -> pb.StreamResponse:
        self._box.put(chunk)
        return next(self._answers)

    def _resume(self) -> pb.StreamResponse:
        """A new stream on the restored session, the kept chunks it has not seen sent again; the last one's answer."""
        deadline = time.monotonic() + self._give_up_s
        while True:
            try:
                self._open(resume=True)
                restored = self._exchange(pb.StreamRequest()).position
                pending = [(start, chunk) for start, chunk in self._kept if start >= restored]
                if restored > self.position:
                    raise ReplayImpossible(
                        f"session {self._session_id!r} was restored at position {restored}, past the last answer this client "
                        f"got ({self.position}): its server stored the state of a chunk whose answer never arrived"
                    )
                if not pending or pending[0][0] != restored:
                    raise ReplayImpossible(
                        f"session {self._session_id!r} was restored at position {restored}, but the chunks kept start at "
                        f"{self._kept[0][0] if self._kept else self.position}: keep more chunks (keep=)"
                    )
                self.resumes += 1
                for _, chunk in pending[:-1]:
                    self._exchange(chunk)
                    self.replayed += 1
                return self._exchange(pending[-1][1])
            except grpc.RpcError as err:
                if err.code() not in RETRY + WAIT or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
