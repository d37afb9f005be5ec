"""The one table from domain errors to gRPC status codes, and the wrappers that apply it."""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager

import grpc

from server import errors
from server.metrics import Metrics
from server.repository import Repository

log = logging.getLogger(__name__)

STATUS: dict[type[errors.ServeError], grpc.StatusCode] = {
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.RuntimeFailure: grpc.StatusCode.INTERNAL,
}


async def _abort(context: grpc.aio.ServicerContext, err: errors.ServeError):
    code = STATUS.get(type(err), grpc.StatusCode.INTERNAL)
    if code == grpc.StatusCode.INTERNAL:
        log.error("internal error: %s", err)
    await context.abort(code, str(err))


def unary(method):
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            return await method(self, request, context)
        except errors.ServeError as err:
            await _abort(context, err)

    return wrapper


def streaming(method):
    @functools.wraps(method)
    async def wrapper(self, request, context):
        try:
            async for response in method(self, request, context):
                yield response
        except errors.ServeError as err:
            await _abort(context, err)

    return wrapper


@contextmanager
def counted(metrics: Metrics, repository: Repository, api: str, method: str, model: str, version: str):
    """Counts one inference request as a success, or as a failure under the status it gets. A model that
    does not exist is counted as "" so that clients cannot create series at will."""
    try:
        card = repository.get(model, version).card
        labels = (card.name, card.version)
    except errors.NotFound:
        labels = ("", "")
    try:
        yield
    except errors.ServeError as err:
        metrics.request_failure.labels(*labels, api, method, STATUS.get(type(err), grpc.StatusCode.INTERNAL).name).inc()
        raise
    except BaseException:
        metrics.request_failure.labels(*labels, api, method, "CANCELLED").inc()
        raise
    metrics.request_success.labels(*labels, api, method).inc()
