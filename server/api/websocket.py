"""The native Stream contract over a WebSocket, on --http-port: for clients that do not speak gRPC (browsers, media
and telephony servers), and for many per-session streams at a lower cost per message than grpc.aio's (an echo,
32 paced streams on this project's 2-core machine: 150 µs of server CPU a message against grpc.aio's 400).

`GET /v1/stream` upgrades to a WebSocket. Every message in is one `StreamRequest`, every message out one
`StreamResponse`, exactly as on gRPC (`protos/rnnserve/v1/rnnserve.proto`): a binary frame carries the protobuf
bytes, a text frame the same message in protobuf's JSON mapping, and each answer comes in the kind of frame its
question came in. The first message names the model in `start`. A session is the same session whichever way it is
reached: opened here, it continues over gRPC (`start.resume`) and back, and it belongs to the same caller (a bearer
token in the upgrade's `authorization` header, or from a browser as the subprotocol `rnnserve.bearer.<base64url
token>` beside `rnnserve.v1`; or a client certificate under mutual TLS).

A call that fails ends with one last text frame, `{"code": "INVALID_ARGUMENT", "message": "…"}` (gRPC's status
names and our messages), and the close code 4000 + gRPC's number for the status (4003 for INVALID_ARGUMENT); a
refused upgrade is an HTTP 401 with the same JSON; a message over --max-message-bytes closes it with 1009 (too big)
before any more of it is read. aiohttp: asyncio's own HTTP server, in the gRPC server's event
loop, so a WebSocket's steps batch with gRPC's in one engine."""

from __future__ import annotations

import asyncio
import base64
import json
import logging

import grpc
from aiohttp import WSMsgType, web
from google.protobuf import json_format
from google.protobuf.message import DecodeError

from rnnserve.server import errors
from rnnserve.server.api.http_identity import request_caller
from rnnserve.server.api.in_flight import InFlight
from rnnserve.server.api.native import NativeServicer
from rnnserve.server.api.status import internal_error, status_of
from rnnserve.server.security import Grant, run_as
from rnnserve.v1 import rnnserve_pb2 as pb

log = logging.getLogger(__name__)

API = "websocket"
PATH = "/v1/stream"
PROTOCOL = "rnnserve.v1"  # the subprotocol the server picks when a client offers it (a browser sending a token must)
BEARER_PREFIX = "rnnserve.bearer."
CLOSE_BASE = 4000  # + gRPC's status number: the application's range of close codes (RFC 6455, 7.4.2)


class WebSocketStreams:
    def __init__(self, native: NativeServicer, in_flight: InFlight, grants: dict[str, Grant] | None, max_message_bytes: int,
                 heartbeat_s: float):
        """`grants`: the --auth-tokens file's (None: no tokens); under mutual TLS without tokens, the client
        certificate's subject is the caller."""
        self._native = native
        self._in_flight = in_flight
        self._grants = grants
        self._max_message_bytes = max_message_bytes
        self._heartbeat_s = heartbeat_s

    def routes(self) -> list[web.RouteDef]:
        return [web.get(PATH, self.stream)]

    async def stream(self, request: web.Request) -> web.StreamResponse:
        try:
            identity = request_caller(self._grants, request, subprotocol_bearer(request))
        except errors.Unauthenticated as err:
            return web.json_response({"code": "UNAUTHENTICATED", "message": str(err)}, status=401)
        socket = web.WebSocketResponse(max_msg_size=self._max_message_bytes, heartbeat=self._heartbeat_s, protocols=(PROTOCOL,))
        await socket.prepare(request)
        run_as(identity)  # this handler's task, and what it starts, is the caller's
        messages = Messages(socket)
        with self._in_flight.track():
            try:
                async for response in self._native.stream(messages, API):
                    if messages.text:
                        await socket.send_str(json_format.MessageToJson(response, indent=None))
                    else:
                        await socket.send_bytes(response.SerializeToString())
                await socket.close()
            except errors.ServeError as err:
                if status_of(err) == grpc.StatusCode.INTERNAL:
                    log.error("WebSocket stream: %s", err)
                await _fail(socket, status_of(err), str(err))
            except asyncio.CancelledError:
                if self._in_flight.ending:  # the shutdown ends it: the client is told why
                    await _fail(socket, grpc.StatusCode.UNAVAILABLE, self._in_flight.ending)
                raise
            except ConnectionError:  # the client went away mid-answer: its sessions were closed on the way out
                pass
            except Exception as err:
                await _fail(socket, grpc.StatusCode.INTERNAL, internal_error("WebSocket stream", err))
        return socket


def subprotocol_bearer(request: web.Request) -> str | None:
    """A browser's token: it cannot set a WebSocket's headers, so it offers the subprotocols `rnnserve.v1` (the one
    the server picks, so the token is never echoed back) and `rnnserve.bearer.<the token in base64url>`, as
    Kubernetes' API server takes one. The `authorization` header it stands for, or None."""
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    for protocol in offered:
        if protocol.startswith(BEARER_PREFIX):
            encoded = protocol[len(BEARER_PREFIX):]
            try:
                return "Bearer " + base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (ValueError, UnicodeDecodeError):
                raise errors.Unauthenticated(f"the subprotocol {BEARER_PREFIX}… must carry the token in base64url") from None
    return None


class Messages:
    """The WebSocket's messages as StreamRequests, noting whether the latest came as text (JSON), so that its
    answer goes back the same way."""

    def __init__(self, socket: web.WebSocketResponse):
        self._socket = socket
        self.text = False

    def __aiter__(self):
        return self._read()

    async def _read(self):
        async for message in self._socket:
            if message.type == WSMsgType.BINARY:
                self.text = False
                try:
                    yield pb.StreamRequest.FromString(message.data)
                except DecodeError:
                    raise errors.InvalidArgument(
                        "message", "a binary frame must be one rnnserve.v1.StreamRequest in protobuf (or send it as JSON in a text frame)"
                    ) from None
            elif message.type == WSMsgType.TEXT:
                self.text = True
                try:
                    yield json_format.Parse(message.data, pb.StreamRequest())
                except json_format.ParseError as err:
                    raise errors.InvalidArgument("message", f"a text frame must be one rnnserve.v1.StreamRequest in JSON: {err}") from None
            elif message.type == WSMsgType.ERROR:  # aiohttp has closed it (1009 for a message over --max-message-bytes)
                raise errors.InvalidArgument("message", f"not a WebSocket message the server can read: {self._socket.exception()}")


async def _fail(socket: web.WebSocketResponse, code: grpc.StatusCode, message: str) -> None:
    """The call's last words: its status as JSON, then the close code that carries it."""
    if socket.closed:
        return
    try:
        await socket.send_str(json.dumps({"code": code.name, "message": message}))
        await socket.close(code=CLOSE_BASE + code.value[0], message=code.name.encode())
    except ConnectionError:
        pass
