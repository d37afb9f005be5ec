"""The native API's ListModels and Generate on --http-port, in protobuf's JSON mapping, as /v1/stream is Stream's:
for browsers and `curl`, and for what OpenAI's completions cannot carry — every kind of model a caller may use, a
conditional model's label, an encoder–decoder's source and the attention of every token it writes.

`GET /v1/rnnserve/models` answers a `ListModelsResponse`. `POST /v1/rnnserve/generate` takes a `GenerateRequest`
and answers server-sent events, one `GenerateResponse` each, then `data: [DONE]`. A request refused before its
answer starts is `{"code": "INVALID_ARGUMENT", "message": "…"}` with Triton's HTTP status for it (400, 401, 403,
404…); a failure after it started is that JSON as the last event. Counted under `api="http"`."""

from __future__ import annotations

from aiohttp import web
from google.protobuf import json_format

from rnnserve.server import errors
from rnnserve.server.api.events import EventStream
from rnnserve.server.api.http_identity import request_caller
from rnnserve.server.api.kserve_rest import http_status
from rnnserve.server.api.native import NativeServicer
from rnnserve.server.api.native_messages import generate_request, generate_response
from rnnserve.server.api.status import internal_error, status_of
from rnnserve.server.security import Grant, run_as
from rnnserve.v1 import rnnserve_pb2 as pb

API = "http"


class NativeHttp:
    def __init__(self, native: NativeServicer, grants: dict[str, Grant] | None):
        self._native = native
        self._grants = grants

    def routes(self) -> list[web.RouteDef]:
        return [web.get("/v1/rnnserve/models", self.models), web.post("/v1/rnnserve/generate", self.generate)]

    async def models(self, request: web.Request) -> web.Response:
        try:
            run_as(request_caller(self._grants, request))
            return _json(pb.ListModelsResponse(models=self._native.model_infos()))
        except Exception as err:
            return _error(request, err)

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            run_as(request_caller(self._grants, request))
            try:
                asked = json_format.Parse(await request.text(), pb.GenerateRequest())
            except (json_format.ParseError, UnicodeDecodeError) as err:
                raise errors.InvalidArgument("body", f"must be one rnnserve.v1.GenerateRequest in JSON: {err}") from None
            pieces = aiter(self._native.generate(asked.model, asked.version, generate_request(asked), API))
            first = await anext(pieces, None)  # refusals (an unknown model, a bad prompt) come before the answer starts
        except Exception as err:
            return _error(request, err)
        events = await EventStream.opened(request)
        try:
            piece = first
            while piece is not None:
                await events.send(json_format.MessageToJson(generate_response(piece), indent=None))
                piece = await anext(pieces, None)
        except errors.ServeError as err:
            await events.send({"code": status_of(err).name, "message": str(err)})
        return await events.done()


def _json(message) -> web.Response:
    return web.Response(text=json_format.MessageToJson(message, indent=None), content_type="application/json")


def _error(request: web.Request, err: Exception) -> web.Response:
    if isinstance(err, errors.ServeError):
        return web.json_response({"code": status_of(err).name, "message": str(err)}, status=http_status(err))
    return web.json_response({"code": "INTERNAL", "message": internal_error(request.path, err)}, status=500)
