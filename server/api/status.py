"""The one table from domain errors to gRPC status codes, and the wrappers that apply it: every call a
servicer serves goes through `unary` or `streaming`, which also keep track of the calls in flight, so that a
shutdown can end those still open after its grace period with a status that says why."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from rnnserve.server import errors, logs
from rnnserve.server.metrics import Metrics
from rnnserve.server.repository import Model, Repository
from rnnserve.server.security import allowed_models, authorize

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServeError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.RuntimeFailure: grpc.StatusCode.INTERNAL,
}


class InFlight:
    """The calls being served. At shutdown, those still open after the grace period are ended with UNAVAILABLE
    and a message that says the server is going away (gRPC alone would say only "Cancelling all calls")."""

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

    async def end_all(self, grace_s: float, message: str) -> None:
        """Waits up to `grace_s` for the open calls, then ends the rest with `message`."""
        if self._calls:
            await asyncio.wait(list(self._calls), timeout=grace_s)
        self.ending = message
        for task in list(self._calls):
            task.cancel()


async def _abort(context: grpc.aio.ServicerContext, err: errors.ServeError):
    code = STATUS.get(type(err), grpc.StatusCode.INTERNAL)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", err)
    await context.abort(code, str(err))


async def _ended(in_flight: InFlight, context: grpc.aio.ServicerContext):
    """A call cancelled by the shutdown gets the shutdown's message; one its client cancelled just ends."""
    if in_flight.ending:
        await context.abort(grpc.StatusCode.UNAVAILABLE, in_flight.ending)


def unary(method):
    @functools.wraps(method)
    async def wrapper(self, request, context):
        with self.in_flight.track():
            try:
                return await method(self, request, context)
            except errors.ServeError as err:
                await _abort(context, err)
            except asyncio.CancelledError:
                await _ended(self.in_flight, context)
                raise

    return wrapper


def streaming(method):
    """A streaming method's generator is closed when the call ends, however it ends: gRPC stops iterating a
    generator whose call was cancelled while a response was being written, and would otherwise leave its
    clean-up (freeing sessions and sequences) to the garbage collector."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        responses = method(self, request, context)
        context.add_done_callback(lambda _: asyncio.ensure_future(_close(responses)))
        with self.in_flight.track():
            try:
                async with contextlib.aclosing(responses):
                    async for response in responses:
                        yield response
            except errors.ServeError as err:
                await _abort(context, err)
            except asyncio.CancelledError:
                await _ended(self.in_flight, context)
                raise

    return wrapper


async def _close(responses) -> None:
    with contextlib.suppress(RuntimeError):  # still running: it is ending by itself
        await responses.aclose()


def looked_up(repository: Repository, name: str, version: str) -> Model:
    """The model a metadata call names, if the call's token covers it (not counted: no inference runs)."""
    authorize(name)
    return repository.get(name, version)


def visible(repository: Repository) -> list[Model]:
    """Every model version the call's token covers (a token for some models sees only those)."""
    allowed = allowed_models()
    return [m for m in repository.all() if allowed is None or m.card.name in allowed]


def resolved(metrics: Metrics, repository: Repository, api: str, method: str, name: str, version: str) -> Model:
    """The model a request names, looked up once per request, if the call's token covers it. A model that does not
    exist, or that the token does not cover, fails the request, counted under model "" so that clients cannot create
    series at will."""
    try:
        authorize(name)
        return repository.get(name, version)
    except (errors.NotFound, errors.PermissionDenied) as err:
        status = STATUS[type(err)].name
        metrics.request_done("", "", api, method, status)
        if logs.records_calls():
            logs.call(api, method, name, version, "", status, 0.0)
        raise


@dataclass(slots=True)
class Call:
    """What a servicer learns about the call it counts, for the call log."""

    session: str = ""  # the session or KServe sequence it ran on, if named


@contextmanager
def counted(metrics: Metrics, model: Model, api: str, method: str):
    """Counts one inference request as a success, or as a failure under the status it gets, and logs it when calls
    are logged (`--log-format json`)."""
    call, began, status = Call(), time.perf_counter(), ""
    try:
        yield call
    except errors.ServeError as err:
        status = STATUS.get(type(err), grpc.StatusCode.INTERNAL).name
        raise
    except (asyncio.CancelledError, GeneratorExit):  # the client went away, or the shutdown ended the call
        status = "CANCELLED"
        raise
    except Exception:  # a fault of ours
        status = "INTERNAL"
        raise
    finally:
        seconds = time.perf_counter() - began
        metrics.request_done(model.card.name, model.card.version, api, method, status)
        model.metrics.statistics.request(seconds, not status)
        if logs.records_calls():
            logs.call(api, method, model.card.name, model.card.version, call.session, status or "OK", seconds)
