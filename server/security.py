"""Who may call: TLS on the gRPC port (mutual, with a client CA), and bearer tokens checked on every call but the
health service's, so that probes stay open.

Tokens live in a file as SHA-256 hashes, never as themselves, one per line, each with the models it may use and,
for an operator, the scope that lets it act on anyone's sessions:

    # <sha256 of the token> <models: comma-separated, or *> [scope:operator] [a name, for people]
    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 lm,kind   ci-pipeline

`rnnserve token --file tokens.txt --models lm` makes a token and appends its line. A call without a known token is
answered UNAUTHENTICATED; a call for a model its token does not cover, PERMISSION_DENIED.

Every call runs as a caller: the models it may use, and the principal its sessions belong to — its token (by its
hash), or under mutual TLS without tokens its client certificate's subject. Without tokens or mutual TLS there is
no principal: every client shares one namespace of session ids.
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
from rnnserve.server.api.handlers import rewrapped
from rnnserve.server.errors import PermissionDenied, Unauthenticated

OPEN_SERVICES = ("/grpc.health.v1.Health/",)  # probes (Kubernetes, docker's HEALTHCHECK) carry no token
ALL_MODELS = "*"
OPERATOR = "scope:operator"
_LINE = re.compile(rf"(?P<hash>[0-9a-f]{{64}})\s+(?P<models>\S+)(\s+(?P<operator>{OPERATOR}))?(\s+(?P<name>.*))?")


@dataclass(frozen=True, slots=True)
class Caller:
    models: frozenset[str] | None = None  # the models it may use; None: every model
    principal: str = ""  # whom its sessions belong to: "token:<16 hex of its hash>" or "cert:<subject>"; "" without auth
    operator: bool = False  # may snapshot, fork, close and continue anyone's sessions


ANYONE = Caller()  # no tokens and no mutual TLS
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller", default=ANYONE)


def caller() -> Caller:
    """The current call's caller."""
    return _caller.get()


def new_token() -> str:
    return "rns_" + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(token: str, models: str = ALL_MODELS, name: str = "", operator: bool = False) -> str:
    return f"{hash_token(token)} {models}{f' {OPERATOR}' if operator else ''}{f'  {name}' if name else ''}"


@dataclass(frozen=True)
class Grant:
    models: frozenset[str] | None  # None: every model
    name: str
    operator: bool = False


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
                f"--auth-tokens {path}, line {number}: expected '<sha256 hex of the token> <models or *> [{OPERATOR}] [name]' "
                "(make lines with `rnnserve token`)"
            )
        models = match["models"]
        grants[match["hash"]] = Grant(
            None if models == ALL_MODELS else frozenset(models.split(",")), match["name"] or "", bool(match["operator"])
        )
    if not grants:
        raise ValueError(f"--auth-tokens {path}: no tokens in it, so no call could be made (make one with `rnnserve token`)")
    return grants


def authorize(model: str) -> None:
    """PERMISSION_DENIED unless the current call's token covers the model."""
    allowed = _caller.get().models
    if allowed is not None and model not in allowed:
        raise PermissionDenied(f"this token does not cover model {model!r}")


def allowed_models() -> frozenset[str] | None:
    return _caller.get().models


class TokenCheck(grpc.aio.ServerInterceptor):
    """Checks the `authorization: Bearer <token>` metadata of every call but health's, and runs the call's handler
    as its token's caller."""

    def __init__(self, grants: dict[str, Grant]):
        self._grants = grants

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        header = next((value for key, value in details.invocation_metadata or () if key == "authorization"), None)
        try:
            identity = token_caller(self._grants, header)
        except Unauthenticated as err:
            return _refusal(handler, str(err))
        return _as_caller(handler, lambda context: identity)


def token_caller(grants: dict[str, Grant], header: str | None) -> Caller:
    """The caller an `authorization` header's bearer token makes (gRPC metadata or an HTTP header alike), or
    Unauthenticated saying what is wrong with it."""
    if header is None:
        raise Unauthenticated(NO_TOKEN)
    if header[:7].lower() != "bearer ":
        raise Unauthenticated(NOT_BEARER)
    digest = hash_token(header[7:].strip())
    grant = grants.get(digest)
    if grant is None:
        raise Unauthenticated(UNKNOWN_TOKEN)
    return Caller(grant.models, f"token:{digest[:16]}", grant.operator)


def run_as(identity: Caller) -> None:
    """The current task (and what it starts) runs as `identity`: for calls that reach us other than by gRPC."""
    _caller.set(identity)


class CertificateSubjects(grpc.aio.ServerInterceptor):
    """Under mutual TLS without tokens: every call runs as its client certificate's subject."""

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_SERVICES):
            return handler
        return _as_caller(handler, certificate_caller)


def certificate_caller(context: grpc.aio.ServicerContext) -> Caller:
    """The caller a client certificate makes: its subject as the principal (or its common name, where gRPC's
    authentication context has no subject)."""
    auth = context.auth_context()
    subject = (auth.get("x509_subject") or auth.get("x509_common_name") or [b""])[0].decode(errors="replace")
    return Caller(None, f"cert:{subject}") if subject else ANYONE


def _as_caller(handler: grpc.RpcMethodHandler, identify) -> grpc.RpcMethodHandler:
    """The handler, run as `identify(context)`: the caller its calls are checked against."""

    async def enter(request, context):
        _caller.set(identify(context))
        return request

    return rewrapped(handler, enter)


NO_TOKEN = "this server needs a token and none was sent: send the metadata (or HTTP header) 'authorization: Bearer <token>' (rnnserve's CLI: --token)"
NOT_BEARER = "the authorization metadata (or HTTP header) is not a bearer token: send 'authorization: Bearer <token>'"
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
