"""Reading the PEM files named by TLS flags, on the server and in the client, with a refusal that says what the
file holds instead: gRPC given a key where a certificate belongs fails every later call with "failed to connect",
as if no server were there."""

from __future__ import annotations

from pathlib import Path

from rnnserve.errors import UsageError

CERTIFICATE = b"-----BEGIN CERTIFICATE-----"
PRIVATE_KEY = b"PRIVATE KEY-----"  # PKCS#8, or RSA and EC keys in their own formats


def read_pem(flag: str, path: str, marker: bytes, expected: str) -> bytes:
    """The file's bytes once it is known to hold a PEM block of the kind `marker` names; `expected` says what the
    flag needs, for the message."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise UsageError(f"{flag} {path}: {err.strerror}") from None
    if marker not in data:
        held = "a private key" if PRIVATE_KEY in data else "a certificate" if CERTIFICATE in data else "no PEM block"
        raise UsageError(f"{flag} {path} holds {held}: expected {expected}, in PEM")
    return data
