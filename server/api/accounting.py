"""Counting inference requests: each is a success, or a failure under the status it got, in the metrics, Triton's
statistics and (with `--log-format json`) the call log."""

from __future__ import annotations

import asyncio
import time
from contextlib import contextmanager
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


@contextmanager
def counted(metrics: Metrics, model: Model, api: str, method: str):
    call, began, status = Call(), time.perf_counter(), ""
    try:
        yield call
    except errors.ServeError as err:
        status = status_of(err).name
        raise
    except (asyncio.CancelledError, GeneratorExit):  # the client went away, or the shutdown ended the call
        status = "CANCELLED"
        raise
    except Exception:  # a fault of ours: the caller answers INTERNAL (server/api/status.py)
        status = "INTERNAL"
        raise
    finally:
        count(metrics, model, api, method, status, time.perf_counter() - began, call.session, call.position)


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
