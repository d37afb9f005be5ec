"""Counting inference requests: each is a success, or a failure under the status it got, in the metrics, Triton's
statistics and (with `--log-format json`) the call log."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rnnserve.server import errors, logs
from rnnserve.server.api.status import status_of
from rnnserve.server.metrics import Metrics
from rnnserve.server.repository import Model


@dataclass(slots=True)
class Call:
    """What a servicer learns about the call it counts, for the call log."""

    session: str = ""  # the session or KServe sequence it ran on, if named
    position: int = -1  # where that session is after the call (-1: not told)


class counted:
    """`with counted(metrics, model, api, method) as call:` counts the request done when the block ends, under the
    status it ended with. A class, not a generator-based context manager: every request pays for it."""

    __slots__ = ("_metrics", "_model", "_api", "_method", "_began", "_call")

    def __init__(self, metrics: Metrics, model: Model, api: str, method: str):
        self._metrics, self._model, self._api, self._method = metrics, model, api, method

    def __enter__(self) -> Call:
        self._began, self._call = time.perf_counter(), Call()
        return self._call

    def __exit__(self, kind, err, traceback) -> bool:
        if kind is None:
            status = ""
        elif issubclass(kind, errors.ServeError):
            status = status_of(err).name
        elif issubclass(kind, (asyncio.CancelledError, GeneratorExit)):  # the client went away, or the shutdown ended the call
            status = "CANCELLED"
        else:  # a fault of ours: the caller answers INTERNAL (server/api/status.py)
            status = "INTERNAL"
        call = self._call
        count(self._metrics, self._model, self._api, self._method, status, time.perf_counter() - self._began, call.session, call.position)
        return False


def count(metrics: Metrics, model: Model, api: str, method: str, status: str, seconds: float, session: str = "", position: int = -1) -> None:
    """One request done: OK (status "") or failed under this status; for requests answered together, each counts."""
    metrics.request_done(model.card.name, model.card.version, api, method, status)
    model.metrics.statistics.request(seconds, not status)
    if logs.records_calls():
        logs.call(api, method, model.card.name, model.card.version, session, status or "OK", seconds, position)


def count_together(metrics: Metrics, model: Model, api: str, method: str, seconds: float, answered: list[tuple[str, int]]) -> None:
    """Requests of one model answered together (a multiplexed message's), each as `count` would: (session, position)."""
    metrics.request_done(model.card.name, model.card.version, api, method, requests=len(answered))
    model.metrics.statistics.request(seconds, True, len(answered))
    if logs.records_calls():
        for session, position in answered:
            logs.call(api, method, model.card.name, model.card.version, session, "OK", seconds, position)


def refused(metrics: Metrics, api: str, method: str, name: str, version: str, err: errors.ServeError) -> None:
    """A request for a model that does not exist, or that its token does not cover: counted under model "" so that
    clients cannot create series at will."""
    status = status_of(err).name
    metrics.request_done("", "", api, method, status)
    if logs.records_calls():
        logs.call(api, method, name, version, "", status, 0.0)
