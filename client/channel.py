"""A channel to a server as it is deployed: plaintext, TLS (checked against a CA, with a client certificate for
mutual TLS) and a bearer token sent with every call."""

from __future__ import annotations

from pathlib import Path

import grpc


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
    if tls_ca or tls_cert:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(tls_ca), private_key=_read(tls_key), certificate_chain=_read(tls_cert)
        )
        channel = grpc.secure_channel(target, credentials, options=options)
    else:
        channel = grpc.insecure_channel(target, options=options)
    if token:
        channel = grpc.intercept_channel(channel, _BearerToken(token))
    return channel


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


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
