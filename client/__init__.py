"""A small Python client for the native rnnserve.v1 API."""

from rnnserve.client.native import RnnServeClient, outputs_of, values_tensor

__all__ = ["RnnServeClient", "outputs_of", "values_tensor"]
