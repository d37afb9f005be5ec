"""A small Python client for the native rnnserve.v1 API."""

from rnnserve.client.native import (
    RnnServeClient,
    audio_request,
    forecast_of,
    forecast_request,
    outputs_of,
    rows_outputs,
    session_chunk,
    session_rows,
    values_tensor,
)

__all__ = ["RnnServeClient", "audio_request", "forecast_of", "forecast_request", "outputs_of", "rows_outputs", "session_chunk", "session_rows", "values_tensor"]
