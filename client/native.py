"""Blocking client for rnnserve.v1: list models, stream a generation, stream chunks in and predictions out."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from rnnserve.client.channel import open_channel
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc


class RnnServeClient:
    def __init__(
        self,
        target: str = "127.0.0.1:50051",
        timeout_s: float | None = None,
        options: list | None = None,
        tls_ca: str | None = None,
        token: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ):
        """`options`: gRPC channel arguments, e.g. ("grpc.use_local_subchannel_pool", 1) for a connection of its own.
        `tls_ca`, `token`, `tls_cert`, `tls_key`: for a server with TLS and tokens (see client/channel.py)."""
        self._channel = open_channel(target, tls_ca, token, tls_cert, tls_key, options)
        self._stub = pb_grpc.RnnServeStub(self._channel)
        self._timeout_s = timeout_s

    def __enter__(self) -> RnnServeClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def list_models(self) -> list[pb.ModelInfo]:
        return list(self._stub.ListModels(pb.ListModelsRequest(), timeout=self._timeout_s).models)

    def get_model(self, model: str, version: str = "") -> pb.ModelInfo:
        return self._stub.GetModel(pb.GetModelRequest(model=model, version=version), timeout=self._timeout_s)

    def generate(
        self, model: str, prompt: str = "", version: str = "", label: str = "", source: str = "", session_id: str = "", **sampling
    ) -> Iterator[pb.GenerateResponse]:
        """Yields pieces as the server produces them. `label`: the kind of text a conditional language model
        writes; `source`: what an encoder–decoder transduces (its pieces carry attention weights); `session_id`:
        the named session a language model's generation continues (or starts), prompt and answer kept in it.
        `sampling`: temperature, top_k, top_p, seed, max_tokens, stop."""
        request = pb.GenerateRequest(
            model=model, version=version, prompt=prompt, label=label, source=source, session_id=session_id,
            sampling=pb.SamplingParams(**sampling),
        )
        return self._stub.Generate(request, timeout=self._timeout_s)

    def generate_text(self, model: str, prompt: str = "", version: str = "", label: str = "", source: str = "", session_id: str = "",
                      **sampling) -> str:
        return "".join(piece.text for piece in self.generate(model, prompt, version, label, source, session_id, **sampling))

    def stream(
        self,
        model: str,
        chunks: Iterable[str | list[int] | np.ndarray | pb.StreamRequest],
        version: str = "",
        session_id: str = "",
        resume: bool = False,
        top_k: int = 0,
        metadata: list[tuple[str, str]] | None = None,
        acknowledged: int = 0,
        score: bool = False,
    ) -> Iterator[pb.StreamResponse]:
        """One response per chunk: text, a list of token ids, an array of steps [T, *step] for a model that takes
        values (read its answer with `outputs_of`), or a full StreamRequest (to reset, say). `metadata`:
        extra call metadata, e.g. the session id for a load balancer's affinity. `acknowledged` (with `resume`):
        the position of the last answer this client got; answers' `behind` then says what the state lacks of it.
        `score`: a language model's steps each carry their token's log-probability (`logprob`)."""
        start = pb.StreamStart(
            model=model, version=version, session_id=session_id, resume=resume, top_k=top_k, acknowledged=acknowledged, score=score
        )

        def requests():
            first = True
            for item in chunks:
                request = item if isinstance(item, pb.StreamRequest) else _chunk_request(item)
                if first:
                    request.start.CopyFrom(start)
                    first = False
                yield request
            if first:  # no chunks: the stream still opens, so a wrong model or session is still reported
                yield pb.StreamRequest(start=start)

        return self._stub.Stream(requests(), timeout=self._timeout_s, metadata=metadata)

    def stream_many(
        self, messages: Iterable[list[pb.SessionChunk] | pb.StreamManyRequest], metadata: list[tuple[str, str]] | None = None
    ) -> Iterator[pb.StreamManyResponse]:
        """Many sessions on one stream: each message is the chunks of any number of sessions (made with
        `session_chunk`), or a StreamManyRequest (chunks and rows: `session_rows`), and each answer holds one
        SessionAnswer per chunk, in order (`code` 0, or its error), and its rows answered (`rows_outputs`)."""
        requests = (m if isinstance(m, pb.StreamManyRequest) else pb.StreamManyRequest(chunks=m) for m in messages)
        return self._stub.StreamMany(requests, timeout=self._timeout_s, metadata=metadata)

    def infer(self, model: str, text: str | list[int], version: str = "", top_k: int = 0) -> list[pb.StepPrediction]:
        """The whole input at once from the initial state: every step's top-k outputs (tokens or labels)."""
        return list(self.infer_response(model, text, version, top_k).steps)

    def classify(self, model: str, text: str, version: str = "") -> list[pb.TokenProbability]:
        """A classifier's answer for a whole text: every class with its probability, most probable first."""
        return list(self.infer_response(model, text, version, top_k=1).classes)

    def infer_response(self, model: str, text: str | list[int], version: str = "", top_k: int = 0) -> pb.InferResponse:
        request = pb.InferRequest(model=model, version=version, top_k=top_k)
        if isinstance(text, str):
            request.text = text
        else:
            request.tokens.extend(text)
        return self._stub.Infer(request, timeout=self._timeout_s)

    def close_session(self, session_id: str) -> None:
        self._stub.CloseSession(pb.CloseSessionRequest(session_id=session_id), timeout=self._timeout_s)

    def snapshot_session(self, session_id: str = "", model: str = "", sequence_id: str = "", version: str = "") -> pb.SessionSnapshot:
        """A named session's (or a KServe sequence's) whole state as a blob; the session goes on unchanged."""
        ref = pb.SessionRef(session_id=session_id, model=model, version=version, sequence_id=str(sequence_id or ""))
        return self._stub.SnapshotSession(ref, timeout=self._timeout_s)

    def restore_session(self, blob: bytes, session_id: str = "", sequence_id: str = "") -> pb.SessionInfo:
        """A snapshot as a live session (under its own id unless another is given), for a stream to resume."""
        request = pb.RestoreSessionRequest(blob=blob, session_id=session_id, sequence_id=str(sequence_id or ""))
        return self._stub.RestoreSession(request, timeout=self._timeout_s)

    def fork_session(self, session_id: str, new_session_id: str = "") -> pb.SessionInfo:
        """A copy of a named session under a new id (made up when none is given)."""
        request = pb.ForkSessionRequest(source=pb.SessionRef(session_id=session_id), session_id=new_session_id)
        return self._stub.ForkSession(request, timeout=self._timeout_s)


def _chunk_request(item: str | list[int] | np.ndarray) -> pb.StreamRequest:
    if isinstance(item, np.ndarray):
        return pb.StreamRequest(values=values_tensor(item))
    return pb.StreamRequest(text=item) if isinstance(item, str) else pb.StreamRequest(tokens=item)


def session_chunk(
    session_id: str, item: str | list[int] | np.ndarray | None = None, model: str = "", resume: bool = False, top_k: int = 0,
    reset: bool = False, close: bool = False,
) -> pb.SessionChunk:
    """One session's chunk of a StreamMany message. `model` (and `resume`, `top_k`) with its first chunk on the
    stream; `item` as `stream` takes it (text, token ids, or an array of steps)."""
    chunk = pb.SessionChunk(session_id=session_id, reset=reset, close=close)
    if model:
        chunk.start.CopyFrom(pb.StreamStart(model=model, resume=resume, top_k=top_k))
    if isinstance(item, np.ndarray):
        chunk.values.CopyFrom(values_tensor(item))
    elif isinstance(item, str):
        chunk.text = item
    elif item is not None:
        chunk.tokens.extend(item)
    return chunk


def session_rows(session_ids: list[str], values: np.ndarray, chunks: list[pb.SessionChunk] = (), close: bool = False) -> pb.StreamManyRequest:
    """A StreamMany message of rows: `values` [N, T, *step], row i the steps of session_ids[i] (sessions already open
    on the stream), read and answered as arrays; `chunks` run before them (a session's first chunk, with `start`);
    `close`: every row's session is closed once answered."""
    rows = pb.SessionRows(session_ids=session_ids, values=values_tensor(values), close=close)
    return pb.StreamManyRequest(chunks=chunks, rows=rows)


def rows_outputs(response: pb.StreamManyResponse) -> tuple[dict[str, np.ndarray], list[tuple[int, str]]]:
    """A message's rows answered: each output's [N, T, *output] (zeros in a row that failed), and each row's
    (code, message), (0, "") when answered."""
    rows = response.rows
    outputs = {t.name: np.frombuffer(t.data, "<f4").reshape(tuple(t.shape)) for t in rows.outputs}
    return outputs, list(zip(rows.codes, rows.messages))


def audio_request(samples: bytes | np.ndarray, sample_rate: int) -> pb.StreamRequest:
    """A Stream message of audio, any number of samples (the server cuts them into the model's steps): PCM16 bytes
    or int16 samples, or float32 samples in [-1, 1]."""
    if isinstance(samples, bytes) or np.asarray(samples).dtype == np.int16:
        data, encoding = samples if isinstance(samples, bytes) else np.asarray(samples, "<i2").tobytes(), pb.Audio.PCM16
    else:
        data, encoding = np.asarray(samples, "<f4").tobytes(), pb.Audio.FLOAT32
    return pb.StreamRequest(audio=pb.Audio(encoding=encoding, sample_rate=sample_rate, data=data))


def values_tensor(values: np.ndarray) -> pb.Tensor:
    """Steps of a model that takes values, [T, *step], as the Tensor a StreamRequest carries."""
    values = np.asarray(values, "<f4")
    return pb.Tensor(dtype="float32", shape=values.shape, data=values.tobytes())


def outputs_of(response: pb.StreamResponse) -> dict[str, np.ndarray]:
    """A values model's answer: each output's [T, *output] for the message's steps."""
    return _arrays(response.outputs)


def forecast_request(values: np.ndarray, horizon: int, paths: int = 0, seed: int = 0) -> pb.StreamRequest:
    """A forecaster's steps [T, series] (at least one) and a look `horizon` steps ahead from the last of them,
    sampled over `paths` futures (0: the server's default); read the answer with `forecast_of`."""
    request = _chunk_request(np.asarray(values, np.float32))
    request.forecast.CopyFrom(pb.ForecastParams(horizon=horizon, paths=paths, seed=seed))
    return request


def forecast_of(response: pb.StreamResponse) -> dict[str, np.ndarray]:
    """A forecaster's look ahead: "mean", "low" (5 % quantile) and "high" (95 %), each [horizon, series]."""
    return _arrays(response.forecast.outputs)


def _arrays(tensors) -> dict[str, np.ndarray]:
    return {t.name: np.frombuffer(t.data, "<f4").reshape(tuple(t.shape)) for t in tensors}
