"""A small Python client for the native rnnserve.v1 API."""

from rnnserve.client.native import RnnServeClient, audio_request, outputs_of, session_chunk, values_tensor

__all__ = ["RnnServeClient", "audio_request", "outputs_of", "session_chunk", "values_tensor"]
