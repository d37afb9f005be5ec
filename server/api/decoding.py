"""Messages that are not the protobuf a method takes: answered INVALID_ARGUMENT naming the message type, counted in
`rnnserve_undecodable_messages_total{method}`, and logged at most once per interval without a traceback — anyone
can send bytes that do not parse, and gRPC alone would answer UNKNOWN and log a traceback for each."""

from __future__ import annotations

import logging
import time

import grpc
from google.protobuf.message import DecodeError

from rnnserve.server.api.handlers import rewrapped
from rnnserve.server.metrics import Metrics

log = logging.getLogger(__name__)

LOG_INTERVAL_S = 10.0
OUR_SERVICES = ("/rnnserve.v1.", "/inference.")


class Undecodable:
    """What a message that does not parse becomes, for the handler to refuse."""

    __slots__ = ("message_type",)

    def __init__(self, message_type: str):
        self.message_type = message_type


class UndecodableMessages(grpc.aio.ServerInterceptor):
    def __init__(self, metrics: Metrics, interval_s: float = LOG_INTERVAL_S):
        self._metrics = metrics
        self._interval_s = interval_s
        self._logged_at = -interval_s
        self._unlogged = 0

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None or not details.method.startswith(OUR_SERVICES):
            return handler  # health and reflection are grpc's own, written in its other style (context.write)
        parse, method = handler.request_deserializer, details.method
        message_type = message_type_of(parse)

        def deserialize(raw: bytes):
            try:
                return parse(raw)
            except DecodeError:
                self.seen(method, message_type)
                return Undecodable(message_type)

        return rewrapped(handler, _parsed, _all_parsed, deserialize)  # refusing what it could not parse

    def seen(self, method: str, message_type: str) -> None:
        self._metrics.undecodable_messages.labels(method).inc()
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= self._interval_s:
            log.warning(
                "%d message(s) that are not valid protobuf since the last report (the latest: %s for %s): a client's "
                "generated code does not match protos/, or it sends something else", self._unlogged, message_type, method,
            )
            self._logged_at, self._unlogged = now, 0


def message_type_of(parse) -> str:
    """The protobuf type a generated request deserializer (`Message.FromString`) parses, by its full name."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "the method's request"


def refusal(message: Undecodable) -> str:
    return (f"the message is not a valid {message.message_type} (protobuf): regenerate the client's code from "
            "rnnserve's protos/, or send what the method takes")


async def _parsed(request, context):
    if isinstance(request, Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
    return request


async def _all_parsed(requests, context):
    return _checked(requests, context)


async def _checked(requests, context):
    async for request in requests:  # a stream's every message passes here: the check is inlined
        if request.__class__ is Undecodable:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, refusal(request))
        yield request
