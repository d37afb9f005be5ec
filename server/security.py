"""Who may call: TLS on the gRPC port (mutual, with a client CA), and bearer tokens checked on every call but the
health service's, so that probes stay open.

Tokens live in a file as SHA-256 hashes, never as themselves, one per line, each with the models it may use:

    # <sha256 of the token> <models: comma-separated, or *> [a name, for people]
    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 lm,kind   ci-pipeline

`rnnserve token --file tokens.txt --models lm` makes a token and appends its line. A call without a known token is
answered UNAUTHENTICATED; a call for a model its token does not cover, PERMISSION_DENIED.
"""

from __future__ import annotations

import contextvars
import hashlib
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import grpc

from rnnserve.pem import CERTIFICATE, PRIVATE_KEY, read_pem
from rnnserve.server.errors import PermissionDenied

OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # probes (Kubernetes, docker's HEALTHCHECK) carry no token
ALL_MODELS = "*"
_LINE = re.compile(r"(?P<hash>[0-9a-f]{64})\s+(?P<models>\S+)(\s+(?P<name>.*))?")

# the models the current call's token covers; None: every model (no tokens, or a token for *)
_allowed: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("allowed_models", default=None)


def new_token() -> str:
    return "rns_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(token: str, models: str = ALL_MODELS, name: str = "") -> str:
    return f"{hash_token(token)} {models}{f'  {name}' if name else ''}"


@dataclass(frozen=True)
class Grant:
    models: frozenset[str] | None  # None: every model
    name: str


def load_tokens(path: str) -> dict[str, Grant]:
    """hash → what its token may do. A malformed line is a ValueError naming the file and the line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise ValueError(f"--auth-tokens {path}: {err.strerror}") from None
    grants = {}
    for number, line in enumerate(lines, 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(
                f"--auth-tokens {path}, line {number}: expected '<sha256 hex of the token> <models or *> [name]' "
                "(make lines with `rnnserve token`)"
            )
        models = match["models"]
        grants[match["hash"]] = Grant(None if models == ALL_MODELS else frozenset(models.split(",")), match["name"] or "")
    if not grants:
        raise ValueError(f"--auth-tokens {path}: no tokens in it, so no call could be made (make one with `rnnserve token`)")
    return grants


def authorize(model: str) -> None:
    """PERMISSION_DENIED unless the current call's token covers the model."""
    allowed = _allowed.get()
    if allowed is not None and model not in allowed:
        raise PermissionDenied(f"this token does not cover model {model!r}")


def allowed_models() -> frozenset[str] | None:
    return _allowed.get()


class TokenCheck(grpc.aio.ServerInterceptor):
    """Checks the `authorization: Bearer <token>` metadata of every call but health's, and runs the call's handler
    with its token's models as the current scope."""

    def __init__(self, grants: dict[str, Grant]):
        self._grants = grants

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        header = next((value for key, value in details.invocation_metadata or () if key == "authorization"), None)
        if header is None:
            return _refusal(handler, NO_TOKEN)
        if header[:7].lower() != "bearer ":
            return _refusal(handler, NOT_BEARER)
        grant = self._grants.get(hash_token(header[7:].strip()))
        if grant is None:
            return _refusal(handler, UNKNOWN_TOKEN)
        return _scoped(handler, grant.models)


def _scoped(handler: grpc.RpcMethodHandler, models: frozenset[str] | None) -> grpc.RpcMethodHandler:
    """The handler, run with `models` as the scope its calls are checked against."""
    if handler.unary_unary:
        async def unary_unary(request, context):
            _allowed.set(models)
            return await handler.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(unary_unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        async def unary_stream(request, context):
            _allowed.set(models)
            async for response in handler.unary_stream(request, context):
                yield response

        return grpc.unary_stream_rpc_method_handler(unary_stream, handler.request_deserializer, handler.response_serializer)
    if handler.stream_unary:
        async def stream_unary(requests, context):
            _allowed.set(models)
            return await handler.stream_unary(requests, context)

        return grpc.stream_unary_rpc_method_handler(stream_unary, handler.request_deserializer, handler.response_serializer)

    async def stream_stream(requests, context):
        _allowed.set(models)
        async for response in handler.stream_stream(requests, context):
            yield response

    return grpc.stream_stream_rpc_method_handler(stream_stream, handler.request_deserializer, handler.response_serializer)


NO_TOKEN = "this server needs a token and none was sent: send the metadata 'authorization: Bearer <token>' (rnnserve's CLI: --token)"
NOT_BEARER = "the authorization metadata is not a bearer token: send 'authorization: Bearer <token>'"
UNKNOWN_TOKEN = (
    "the token sent is not one this server knows (not in its --auth-tokens file, or removed from it): check it, "
    "or make one with `rnnserve token`"
)


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind that answers UNAUTHENTICATED with `message`."""

    async def refuse(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = ("unary" if handler.unary_unary or handler.unary_stream else "stream") + "_" + (
        "unary" if handler.unary_unary or handler.stream_unary else "stream"
    )
    make = getattr(grpc, f"{kind}_rpc_method_handler")
    return make(refuse, handler.request_deserializer, handler.response_serializer)


def server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials:
    """TLS with the server's certificate chain and key; with a client CA, clients must show a certificate it signed."""

    chain = read_pem("--tls-cert", cert, CERTIFICATE, "the server's certificate chain")
    pair = [(read_pem("--tls-key", key, PRIVATE_KEY, "the private key of --tls-cert"), chain)]
    if client_ca:
        ca = read_pem("--tls-client-ca", client_ca, CERTIFICATE, "the certificate of the CA that signs clients' certificates")
        return grpc.ssl_server_credentials(pair, root_certificates=ca, require_client_auth=True)
    return grpc.ssl_server_credentials(pair)
