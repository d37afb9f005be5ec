"""Who an HTTP request is (--http-port), as gRPC's interceptors decide it for a call: its bearer token's caller,
or under mutual TLS without tokens, its client certificate's subject; and the HTTP side's TLS."""

from __future__ import annotations

import ssl

from aiohttp import web

from rnnserve.server.security import ANYONE, Caller, Grant, token_caller


def request_caller(grants: dict[str, Grant] | None, request: web.Request, authorization: str | None = None) -> Caller:
    """`grants`: the --auth-tokens file's (None: no tokens). Unauthenticated when a token is needed and missing or
    unknown. `authorization`: the header's value when it came another way (a WebSocket's subprotocol)."""
    if grants is not None:
        return token_caller(grants, authorization or request.headers.get("authorization"))
    peer = request.transport.get_extra_info("peercert") if request.transport else None
    return peer_certificate_caller(peer) if peer else ANYONE


def peer_certificate_caller(peer: dict) -> Caller:
    """A verified client certificate's caller: its subject as gRPC writes it (RFC 2253: the last name first, short
    attribute names), so that the same certificate owns the same sessions over gRPC and here."""
    names = [f"{SHORT_NAMES.get(key, key)}={_escaped(value)}" for rdn in reversed(peer.get("subject", ())) for key, value in rdn]
    return Caller(None, "cert:" + ",".join(names)) if names else ANYONE


SHORT_NAMES = {
    "commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU", "countryName": "C", "localityName": "L",
    "stateOrProvinceName": "ST", "streetAddress": "STREET", "domainComponent": "DC", "userId": "UID",
}


def _escaped(value: str) -> str:
    value = "".join("\\" + c if c in ',+"\\<>;=' else c for c in value)
    if value[:1] in ("#", " "):
        value = "\\" + value
    return value[:-1] + "\\ " if value.endswith(" ") else value


def tls_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    """The HTTP side's TLS: the server's certificate chain and key, and with a client CA, clients must show a
    certificate it signed (as gRPC's)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
