"""The Python side of the native front end: each call front.cc reports runs the same method handler as on --port
(the generated code's handler table, so the same servicers, wrappers and statuses), on the event loop, with its
messages parsed here as grpc.aio would parse them and its answers handed back serialized. ModelStreamInfer is the
exception: front.cc orders its requests by sequence and reads its plain steps itself (stream_infer.py,
plain_steps.py).

What grpc.aio's servicer context does that the servicers use is here too: abort with a status, and callbacks when
the call ends. What it does not carry is the caller: the front end passes no metadata and no TLS, so the server
refuses --native-port beside --auth-tokens or TLS (server/config.py).
"""

from __future__ import annotations

import asyncio
import ctypes
from collections import deque

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from rnnserve.errors import UsageError
from rnnserve.server.api.decoding import Undecodable, UndecodableMessages, message_type_of, refusal
from rnnserve.server.api.status import internal_error
from rnnserve.server.metrics import Metrics
from rnnserve.server.native_front.build import EventView, NativeUnavailable, library
from rnnserve.server.native_front.plain_steps import STEP_RECORD, PlainSteps
from rnnserve.server.native_front.stream_infer import METHOD as STREAM_INFER
from rnnserve.server.native_front.stream_infer import StreamInferCall

START, MESSAGE, HALF_CLOSE, CANCEL = range(4)  # front.cc's event kinds
EVENTS_PER_TAKE = 256
STEPS_PER_TAKE = 1024
SEQUENCE_ID_BYTES = 256 * 1024  # a take's steps' sequence ids, each with a 0 byte
OK, CANCELLED = grpc.StatusCode.OK, grpc.StatusCode.CANCELLED


class _Registered:
    """Where the generated add_…_to_server puts its method handlers: a table by the method's full name."""

    def __init__(self):
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers) -> None:
        pass  # the same handlers as add_registered_method_handlers's, for grpcio's older lookup

    def add_registered_method_handlers(self, service: str, methods: dict) -> None:
        self.handlers.update({f"/{service}/{name}": handler for name, handler in methods.items()})


def method_handlers(*services) -> dict[str, grpc.RpcMethodHandler]:
    """The handler table of each (add_…Servicer_to_server, servicer) pair."""
    registered = _Registered()
    for add, servicer in services:
        add(servicer, registered)
    return registered.handlers


class NativeFront:
    """Bound with the server's other ports, before the models load (calls that come meanwhile wait in front.cc's
    queue); serving once `serve` gives it the method handlers."""

    def __init__(self, lib: ctypes.PyDLL, handle: int, port: int, metrics: Metrics):
        self._lib, self._handle, self.port = lib, handle, port
        self._handlers: dict[str, grpc.RpcMethodHandler] = {}
        self._kserve = self._plain = None  # ModelStreamInfer's servicer, and its plain steps' server
        self._undecodable = UndecodableMessages(metrics)
        self._calls: dict[int, _Call | StreamInferCall] = {}
        self._views = (EventView * EVENTS_PER_TAKE)()
        self._steps = np.zeros(STEPS_PER_TAKE, STEP_RECORD)
        self._sequence_ids = ctypes.create_string_buffer(SEQUENCE_ID_BYTES)
        self._taken_steps, self._sequence_id_bytes = ctypes.c_int(), ctypes.c_size_t()
        self._next_args = (handle, self._views, EVENTS_PER_TAKE, self._steps.ctypes.data, STEPS_PER_TAKE, self._sequence_ids,
                           SEQUENCE_ID_BYTES, ctypes.byref(self._taken_steps), ctypes.byref(self._sequence_id_bytes))  # rf_next's, every take
        self._refusing = ""  # set once shutting down: new calls get UNAVAILABLE with it
        self._loop = asyncio.get_running_loop()
        self._fd = lib.rf_event_fd(handle)

    @classmethod
    def bind(cls, address: str, options: list[tuple[str, int]], metrics: Metrics) -> NativeFront:
        """Listening on `address` with gRPC's channel `options` (the same limits as --port's); the library is
        compiled now if it must be, so a machine without gRPC's C++ library is told at once."""
        try:
            lib = library()
        except NativeUnavailable as err:
            raise UsageError(f"--native-port: {err}") from None
        names = (ctypes.c_char_p * len(options))(*(name.encode() for name, _ in options))
        values = (ctypes.c_int * len(options))(*(value for _, value in options))
        port, error = ctypes.c_int(0), ctypes.create_string_buffer(512)
        handle = lib.rf_start(address.encode(), names, values, len(options), ctypes.byref(port), error, len(error))
        if not handle:
            raise UsageError(f"{error.value.decode()} (--native-port): choose another port, or stop what holds it")
        return cls(lib, handle, port.value, metrics)

    def serve(self, handlers: dict[str, grpc.RpcMethodHandler], kserve, plain: PlainSteps) -> None:
        """Answers every call, those that waited included, with these handlers (method_handlers), but ModelStreamInfer:
        the KServe servicer's `stream_answer` and `plain` answer it."""
        self._handlers, self._kserve, self._plain = handlers, kserve, plain
        self._lib.rf_plain(self._handle, plain.serves_any)
        for model in kserve.models():
            model.batcher.watcher = self.hold
        self._loop.add_reader(self._fd, self._take)
        self._take()  # what came while the models loaded: the eventfd may have been readable since

    def refuse_new_calls(self, message: str) -> None:
        self._refusing = message

    def stop(self, message: str) -> None:
        """Ends the calls still open with UNAVAILABLE and `message`, and closes the port."""
        if self._handle is None:
            return
        self._loop.remove_reader(self._fd)
        self._lib.rf_stop(self._handle, message.encode())
        self._handle = None

    def write(self, call_id: int, data: bytes) -> None:
        if self._handle is not None:  # a call the shutdown outlasted writes nowhere
            self._lib.rf_write(self._handle, call_id, data, len(data))

    def finish(self, call_id: int, code: grpc.StatusCode, details: str) -> None:
        self._calls.pop(call_id, None)
        if self._handle is not None:
            self._lib.rf_finish(self._handle, call_id, code.value[0], details.encode())

    def answer(self, call_id: int, ticket: int, data: bytes) -> None:
        """ModelStreamInfer's answer to the request with this ticket."""
        if self._handle is not None:
            self._lib.rf_answer(self._handle, call_id, ticket, data, len(data))

    def answer_error(self, call_id: int, ticket: int, message: str) -> None:
        if self._handle is not None:
            self._lib.rf_answer_error(self._handle, call_id, ticket, message.encode())

    def defer(self, call_id: int, ticket: int) -> None:
        """A plain step goes to the servicer after all, as bytes (a MESSAGE with its ticket)."""
        if self._handle is not None:
            self._lib.rf_defer(self._handle, call_id, ticket)

    def answer_steps(self, route: int, calls: list[int], tickets: list[int], positions: list[int], steps: int, outputs: list[np.ndarray]) -> None:
        """Plain steps' answers, row i answering (calls[i], tickets[i]) with positions[i] and row i of each output
        [rows, steps, width] (float32, contiguous), in the route's order."""
        if self._handle is None:
            return
        rows = len(calls)
        data = (ctypes.c_void_p * len(outputs))(*(output.ctypes.data for output in outputs))
        self._lib.rf_answer_steps(self._handle, route, rows, (ctypes.c_uint64 * rows)(*calls), (ctypes.c_uint64 * rows)(*tickets),
                                  (ctypes.c_int64 * rows)(*positions), steps, data)

    def route(self, route: int) -> tuple[str, str, str | None]:
        """A plain step route's model name, version and output (None: every output)."""
        text = ctypes.create_string_buffer(4096)
        size = self._lib.rf_route(self._handle, route, text, len(text))
        name, version, output = text.raw[:size].decode().split("\0")
        return name, version, output[1:] if output else None

    def route_answers(self, route: int, name: str, version: str, outputs: list[str], widths: list[int]) -> None:
        names = (ctypes.c_char_p * len(outputs))(*(n.encode() for n in outputs))
        self._lib.rf_route_answers(self._handle, route, name.encode(), version.encode(), len(outputs), names, (ctypes.c_int * len(widths))(*widths))

    def hold(self, calling: bool) -> None:
        """An engine's onnxruntime call begins (True, on its thread), or its results have been handed back (False, on
        the event loop: Batcher.watcher). Plain steps that come meanwhile wait in front.cc, with no wake-up, and are
        taken together once it is over: they could not have joined that call."""
        if self._handle is not None and self._lib.rf_hold(self._handle, calling):
            self._loop.call_soon(self._take)

    def serving(self, call_id: int) -> bool:
        """Whether the call is open here (its answers are still wanted)."""
        return call_id in self._calls

    def undecodable(self, method: str, message_type: str) -> str:
        self._undecodable.seen(method, message_type)
        return refusal(Undecodable(message_type))

    def _take(self) -> None:
        """Every event waiting (up to EVENTS_PER_TAKE, and STEPS_PER_TAKE plain steps; the event loop calls again while
        more wait). A call's start comes before its steps, and its end after them; a request of a sequence never
        comes beside another of that sequence on the same stream (front.cc holds it): so the calls start, then the
        plain steps run, then the calls end."""
        views, calls = self._views, self._calls
        taken = self._lib.rf_next(*self._next_args)
        ends = []
        for i in range(taken):
            view = views[i]
            kind = view.kind
            if kind == MESSAGE:
                call = calls.get(view.call)
                if call is not None:
                    call.message(ctypes.string_at(view.data, view.size), view.ticket)
            elif kind == START:
                self._open(view.call, ctypes.string_at(view.data, view.size).decode())
            else:
                ends.append((view.call, kind))
        if steps := self._taken_steps.value:
            sequence_ids = ctypes.string_at(self._sequence_ids, self._sequence_id_bytes.value).decode().split("\0")[:-1]
            try:
                self._plain.take(self, self._steps[:steps], sequence_ids)
            except Exception as err:  # PlainSteps answers every error of a step: this is a fault of ours, and each gets it
                message = internal_error("ModelStreamInfer plain steps", err)
                for call_id, ticket in self._steps[:steps][["call", "ticket"]].tolist():
                    self.answer_error(call_id, ticket, message)
        for call_id, kind in ends:
            if (call := calls.get(call_id)) is not None:
                call.half_close() if kind == HALF_CLOSE else call.cancel()

    def _open(self, call_id: int, method: str) -> None:
        if self._refusing:
            return self.finish(call_id, grpc.StatusCode.UNAVAILABLE, self._refusing)
        if method == STREAM_INFER and self._kserve is not None:
            self._calls[call_id] = StreamInferCall(self, call_id, self._kserve)
            return
        handler = self._handlers.get(method)
        if handler is None:
            return self.finish(call_id, grpc.StatusCode.UNIMPLEMENTED, f"{method} is not served on --native-port (its services: KServe v2 and rnnserve.v1)")
        self._calls[call_id] = _Call(self, call_id, method, handler)


class _Context:
    """What the servicers use of grpc.aio's servicer context."""

    __slots__ = ("code", "details", "_callbacks")

    def __init__(self):
        self.code, self.details = OK, ""
        self._callbacks: list = []

    async def abort(self, code: grpc.StatusCode, details: str = "") -> None:
        self.refuse(code, details)

    def refuse(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()

    def add_done_callback(self, callback) -> None:
        self._callbacks.append(callback)

    def ended(self) -> None:
        for callback in self._callbacks:
            callback(self)


class _Call:
    __slots__ = ("_front", "_id", "_method", "_handler", "_context", "_requests", "_task")

    def __init__(self, front: NativeFront, call_id: int, method: str, handler: grpc.RpcMethodHandler):
        self._front, self._id, self._method, self._handler = front, call_id, method, handler
        self._context = _Context()
        self._requests = _Requests(self) if handler.request_streaming else None
        self._task = asyncio.ensure_future(self._run(None)) if self._requests is not None else None

    def message(self, data: bytes, ticket: int = 0) -> None:
        if self._requests is not None:
            self._requests.put(data)
        elif self._task is None:  # a unary call's one request (gRPC itself refuses a second)
            self._task = asyncio.ensure_future(self._run(data))

    def half_close(self) -> None:
        if self._requests is not None:
            self._requests.end()
        elif self._task is None:
            self._front.finish(self._id, grpc.StatusCode.INVALID_ARGUMENT, f"{self._method} takes one request message, and none came")

    def cancel(self) -> None:
        if self._task is None:
            self._front.finish(self._id, CANCELLED, "cancelled by the client")
        else:
            self._task.cancel()

    def parsed(self, data: bytes):
        """The request, or the INVALID_ARGUMENT the interceptor on --port gives a message that is not one."""
        parse = self._handler.request_deserializer
        try:
            return parse(data)
        except DecodeError:
            self._context.refuse(grpc.StatusCode.INVALID_ARGUMENT, self._front.undecodable(self._method, message_type_of(parse)))

    async def _run(self, data: bytes | None) -> None:
        handler, context, write = self._handler, self._context, self._front.write
        serialize = handler.response_serializer
        code, details = OK, ""
        try:
            if self._requests is not None:
                async for response in handler.stream_stream(self._requests, context):
                    write(self._id, serialize(response))
            else:
                request = self.parsed(data)
                if handler.unary_unary is not None:
                    write(self._id, serialize(await handler.unary_unary(request, context)))
                else:
                    async for response in handler.unary_stream(request, context):
                        write(self._id, serialize(response))
        except grpc.aio.AbortError:
            code, details = context.code, context.details
        except asyncio.CancelledError:
            code, details = CANCELLED, "cancelled"
        except Exception as err:  # the wrappers turn every error of ours into an abort: this is a fault in them
            code, details = grpc.StatusCode.INTERNAL, internal_error(self._method, err)
        finally:
            self._front.finish(self._id, code, details)
            context.ended()


class _Requests:
    """A stream's requests as the handler iterates them: each parsed when the handler takes it."""

    __slots__ = ("_call", "_waiting", "_waiter", "_ended")

    def __init__(self, call: _Call):
        self._call = call
        self._waiting: deque[bytes] = deque()
        self._waiter: asyncio.Future | None = None
        self._ended = False

    def put(self, data: bytes) -> None:
        self._waiting.append(data)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self._waiting:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._call.parsed(self._waiting.popleft())
