"""KServe v2 over HTTP/REST on --http-port, as Triton's HTTP API defines it: health, server and model metadata, model
readiness and inference (JSON tensors and the binary-tensor extension, server/api/kserve_json.py; a sequence's
requests continue the state its gRPC requests left). Each route answers what the gRPC method of the same name
answers (server/api/kserve.py, called as it is), in the REST protocol's JSON; an error is `{"error": "…"}` with the
HTTP status that Triton gives for its gRPC status. Health is open to probes, as gRPC's is; the rest need the token
when the server has tokens. Inference counts in the metrics and the call log under `api="kserve_http"`."""

from __future__ import annotations

from aiohttp import web

from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.server import errors
from rnnserve.server.api.http_identity import request_caller
from rnnserve.server.api.kserve import KServeServicer
from rnnserve.server.api.kserve_json import HEADER_LENGTH, infer_body, infer_request
from rnnserve.server.api.status import internal_error
from rnnserve.server.security import Grant, run_as

API = "kserve_http"
HTTP_STATUS = {  # Triton's HTTP statuses for the gRPC statuses of our errors
    errors.NotFound: 404, errors.InvalidArgument: 400, errors.ResourceExhausted: 429, errors.FailedPrecondition: 400,
    errors.AlreadyExists: 409, errors.Unauthenticated: 401, errors.PermissionDenied: 403, errors.Unavailable: 503,
    errors.RuntimeFailure: 500,
}


def http_status(err: errors.ServeError) -> int:
    """Triton's HTTP status for one of our errors (500 for any other)."""
    return next((code for kind, code in HTTP_STATUS.items() if isinstance(err, kind)), 500)


class KServeRest:
    def __init__(self, kserve: KServeServicer, grants: dict[str, Grant] | None):
        """`grants`: the --auth-tokens file's (None: no tokens)."""
        self._kserve = kserve
        self._grants = grants

    def routes(self) -> list[web.RouteDef]:
        model = "/v2/models/{name}"
        routes = [web.get("/v2/health/live", self.live), web.get("/v2/health/ready", self.ready), web.get("/v2", self.server_metadata)]
        for path in (model, model + "/versions/{version}"):
            routes += [web.get(path, self.model_metadata), web.get(path + "/ready", self.model_ready), web.post(path + "/infer", self.infer)]
        return routes

    async def infer(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._infer)

    async def live(self, request: web.Request) -> web.Response:
        answer = await _call(KServeServicer.ServerLive, self._kserve, pb.ServerLiveRequest())
        return web.json_response({"live": answer.live}, status=200 if answer.live else 503)

    async def ready(self, request: web.Request) -> web.Response:
        answer = await _call(KServeServicer.ServerReady, self._kserve, pb.ServerReadyRequest())
        return web.json_response({"ready": answer.ready}, status=200 if answer.ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._server_metadata)

    async def model_metadata(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._model_metadata)

    async def model_ready(self, request: web.Request) -> web.Response:
        return await self._answer(request, self._model_ready)

    async def _answer(self, request: web.Request, handler) -> web.Response:
        """The handler's answer (JSON and its status, or a whole response) as the request's caller, or its error with
        its HTTP status."""
        try:
            run_as(request_caller(self._grants, request))
            answer = await handler(request)
            return answer if isinstance(answer, web.Response) else web.json_response(answer[0], status=answer[1])
        except errors.ServeError as err:
            return web.json_response({"error": str(err)}, status=http_status(err))
        except Exception as err:
            return web.json_response({"error": internal_error(request.path, err)}, status=500)

    async def _infer(self, request: web.Request) -> web.Response:
        """The gRPC ModelInfer of the same request, its answer in JSON (and binary, where asked)."""
        asked, header = infer_request(
            request.match_info["name"], request.match_info.get("version", ""), await request.read(), request.headers.get(HEADER_LENGTH)
        )
        body, headers = infer_body(await self._kserve.infer(asked, API), header)
        return web.Response(body=body, headers=headers)

    async def _server_metadata(self, request: web.Request) -> tuple[dict, int]:
        answer = await _call(KServeServicer.ServerMetadata, self._kserve, pb.ServerMetadataRequest())
        return {"name": answer.name, "version": answer.version, "extensions": list(answer.extensions)}, 200

    async def _model_metadata(self, request: web.Request) -> tuple[dict, int]:
        asked = pb.ModelMetadataRequest(name=request.match_info["name"], version=request.match_info.get("version", ""))
        answer = await _call(KServeServicer.ModelMetadata, self._kserve, asked)

        def tensors(specs) -> list[dict]:
            return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

        return {"name": answer.name, "versions": list(answer.versions), "platform": answer.platform,
                "inputs": tensors(answer.inputs), "outputs": tensors(answer.outputs)}, 200

    async def _model_ready(self, request: web.Request) -> tuple[dict, int]:
        asked = pb.ModelReadyRequest(name=request.match_info["name"], version=request.match_info.get("version", ""))
        answer = await _call(KServeServicer.ModelReady, self._kserve, asked)
        return {"name": asked.name, "ready": answer.ready}, 200 if answer.ready else 400


async def _call(method, servicer: KServeServicer, request):
    """A KServe gRPC method's own answer, without its gRPC wrapper (server/api/status.py): errors are raised as ours."""
    return await method.__wrapped__(servicer, request, None)
