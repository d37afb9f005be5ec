"""A small Python client for the native rnnserve.v1 API."""

from rnnserve.client.native import RnnServeClient

__all__ = ["RnnServeClient"]
