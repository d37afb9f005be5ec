"""A gRPC method handler wrapped without changing its kind: what the interceptors (server/security.py,
server/api/decoding.py) do to every call before its servicer sees it."""

from __future__ import annotations

import grpc


def rewrapped(handler: grpc.RpcMethodHandler, on_request, on_requests=None, deserializer=None) -> grpc.RpcMethodHandler:
    """The handler, of the same kind, that first awaits `on_request(request, context)` — for a streaming request,
    `on_requests(requests, context)` (default: the same) — and calls the original with what it returns. Either may
    abort the call, or set the call's context variables. `deserializer`: in place of the handler's own."""
    on_requests = on_requests or on_request
    deserializer = deserializer or handler.request_deserializer
    serializer = handler.response_serializer
    if handler.unary_unary:
        async def unary_unary(request, context):
            return await handler.unary_unary(await on_request(request, context), context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, deserializer, serializer)
    if handler.unary_stream:
        async def unary_stream(request, context):
            async for response in _responses(handler.unary_stream(await on_request(request, context), context)):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, deserializer, serializer)
    if handler.stream_unary:
        async def stream_unary(requests, context):
            return await handler.stream_unary(await on_requests(requests, context), context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, deserializer, serializer)

    async def stream_stream(requests, context):
        async for response in _responses(handler.stream_stream(await on_requests(requests, context), context)):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, deserializer, serializer)


async def _responses(answered):
    """A streaming handler's responses: yielded (a generator), or written with context.write (a coroutine, such as a
    refusal that only aborts)."""
    if hasattr(answered, "__aiter__"):
        async for response in answered:
            yield response
    else:
        await answered
