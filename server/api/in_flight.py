"""The calls being served, so that a shutdown can end those still open after its grace period with a status that
says why (gRPC alone would say only "Cancelling all calls")."""

from __future__ import annotations

import asyncio
from contextlib import contextmanager


class InFlight:
    def __init__(self):
        self._calls: set[asyncio.Task] = set()
        self.ending = ""  # set at shutdown: the message the calls still open are ended with

    @contextmanager
    def track(self):
        task = asyncio.current_task()
        self._calls.add(task)
        try:
            yield
        finally:
            self._calls.discard(task)

    async def end_all(self, grace_s: float, message: str, ending_s: float) -> None:
        """Waits up to `grace_s` for the open calls, then ends the rest with `message`, and waits up to `ending_s` for
        them to have sent it."""
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=grace_s)
        self.ending = message
        ending = list(self._calls)
        for task in ending:
            task.cancel()
        if ending:
            await asyncio.wait(ending, timeout=ending_s)
