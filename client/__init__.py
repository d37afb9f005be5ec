"""A small Python client for the native rnnserve.v1 API."""

from rnnserve.client.native import RnnServeClient, outputs_of, session_chunk, values_tensor

__all__ = ["RnnServeClient", "outputs_of", "session_chunk", "values_tensor"]
