"""The one table from errors to gRPC status codes, and the wrappers that apply it to every method of every service
(a test walks the service descriptors to check). A domain error (server/errors.py) gets its status and its message
as it is; anything else is a fault of ours: INTERNAL, with an error id that the log line (with its traceback)
carries, so that a client's report can be matched to the log. The wrappers also keep track of the calls in flight
(server/api/in_flight.py): a call the shutdown ends gets UNAVAILABLE with the shutdown's message."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import secrets

import grpc

from rnnserve.server import errors

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServeError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.RuntimeFailure: grpc.StatusCode.INTERNAL,
}
WRAPPED = "__rnnserve_status__"  # set on every wrapped method, for the test that walks the services


def status_of(err: BaseException) -> grpc.StatusCode:
    return STATUS.get(type(err), grpc.StatusCode.INTERNAL)


def internal_error(where: str, err: BaseException) -> str:
    """Logs a fault of ours with its traceback under a new error id; the message for the client names the id."""
    error_id = secrets.token_hex(6)
    log.error("internal error %s in %s: %r", error_id, where, err, exc_info=err)
    return f"internal error {error_id}: the server failed on this call; its log has the details under this id"


async def _abort(context: grpc.aio.ServicerContext, where: str, err: Exception):
    if isinstance(err, errors.ServeError):
        code = status_of(err)
        if code == grpc.StatusCode.INTERNAL:
            log.error("%s: %s", where, err)
        await context.abort(code, str(err))
    await context.abort(grpc.StatusCode.INTERNAL, internal_error(where, err))


async def _ended(in_flight, context: grpc.aio.ServicerContext):
    """A call cancelled by the shutdown gets the shutdown's message; one its client cancelled just ends."""
    if in_flight.ending:
        await context.abort(grpc.StatusCode.UNAVAILABLE, in_flight.ending)


def unary(method):
    @functools.wraps(method)
    async def wrapper(self, request, context):
        with self.in_flight.track():
            try:
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort(context, method.__name__, err)
            except asyncio.CancelledError:
                await _ended(self.in_flight, context)
                raise

    setattr(wrapper, WRAPPED, True)
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
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await _abort(context, method.__name__, err)
            except asyncio.CancelledError:
                await _ended(self.in_flight, context)
                raise

    setattr(wrapper, WRAPPED, True)
    return wrapper


async def _close(responses) -> None:
    with contextlib.suppress(RuntimeError):  # still running: it is ending by itself
        await responses.aclose()
