"""A small Python client for the native rnnserve.v1 API."""

from client.native import RnnServeClient

__all__ = ["RnnServeClient"]
