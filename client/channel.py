"""A channel to a server as it is deployed: plaintext, TLS (checked against a CA, with a client certificate for
mutual TLS) and a bearer token sent with every call."""

from __future__ import annotations

import socket
import ssl

import grpc

from rnnserve.errors import UsageError
from rnnserve.pem import CERTIFICATE, PRIVATE_KEY, read_pem


def open_channel(
    target: str,
    tls_ca: str | None = None,
    token: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    options: list | None = None,
) -> grpc.Channel:
    """`tls_ca`: the PEM file of the CA that signed the server's certificate (TLS; "" or None: plaintext, unless a
    client certificate is given, then the system's CAs); `tls_cert`/`tls_key`: this client's certificate, for a
    server that asks for one; `token`: sent as `authorization: Bearer <token>`."""
    if bool(tls_cert) != bool(tls_key):
        raise UsageError("a client certificate needs its key, and a key its certificate: pass both --client-cert and --client-key")
    if tls_ca or tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem("--tls-ca", tls_ca, CERTIFICATE, "the certificate of the CA that signed the server's"),
            private_key=_pem("--client-key", tls_key, PRIVATE_KEY, "the private key of --client-cert"),
            certificate_chain=_pem("--client-cert", tls_cert, CERTIFICATE, "this client's certificate"),
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def _pem(flag: str, path: str | None, marker: bytes, expected: str) -> bytes | None:
    return read_pem(flag, path, marker, expected) if path else None


def explain_unreachable(target: str, details: str, tls: bool, client_cert: bool) -> str | None:
    """What an UNAVAILABLE call's details mean for a person, when gRPC says only that it could not connect: a TLS
    client and a plaintext server (or the reverse), a certificate the other side refused, or no server at all.
    None when the details are about something else (a server shutting down, say)."""
    if "WRONG_VERSION_NUMBER" in details:
        return f"{target} does not speak TLS: drop --tls-ca, --client-cert and --client-key"
    if "CERTIFICATE_VERIFY_FAILED" in details:
        return f"the certificate of {target} is not signed by the CA in --tls-ca: pass the CA that signed it"
    if "Hostname Verification" in details:
        return f"the certificate of {target} does not name {target.rpartition(':')[0]}: connect by a name it has (often localhost)"
    if "Socket closed" in details or "Connection reset" in details:
        if not tls and speaks_tls(target):
            return f"{target} speaks TLS: pass --tls-ca with the certificate of the CA that signed its certificate"
        if tls and not client_cert:
            return f"{target} closed the TLS handshake: it asks for a client certificate (mutual TLS): pass --client-cert and --client-key"
        if tls:
            return f"{target} refused this client's certificate: it must be signed by a CA the server trusts (its --tls-client-ca)"
    if "failed to connect" in details or "errors resolving" in details:
        return f"cannot reach a server at {target}: is it running? Start one with `rnnserve serve`, or pass --target HOST:PORT"
    return None


def speaks_tls(target: str, timeout_s: float = 2.0) -> bool:
    """Whether a TLS handshake with the target succeeds (nothing verified: it only tells TLS from plaintext)."""
    host, _, port = target.rpartition(":")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s) as raw, context.wrap_socket(raw):
            return True
    except (OSError, ValueError):
        return False


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor
):
    """Adds the token to every call's metadata (call credentials would refuse a plaintext channel)."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details):
        return details._replace(metadata=[*(details.metadata or ()), self._header])

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._with_token(details), requests)
