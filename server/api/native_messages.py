"""The rnnserve.v1 messages and the domain's requests and results, each way: reading a request into what the service
takes, and writing what it gives back into a message, in place where a message is built step by step (a Stream's
answer). The servicer (native.py) and the HTTP front end's native routes (native_http.py) share them."""

from __future__ import annotations

import json

import grpc
import numpy as np

from rnnserve.server.api.status import internal_error, status_of
from rnnserve.server.errors import ServeError
from rnnserve.server.repository import Model
from rnnserve.server.requests import (
    AudioInput,
    Candidate,
    Chunk,
    ChunkResult,
    ForecastAsk,
    GeneratedPiece,
    GenerateRequest,
    InferRequest,
    SamplingRequest,
    StepPrediction,
    StreamStart,
    TensorInput,
)
from rnnserve.server.sessions import Session
from rnnserve.v1 import rnnserve_pb2 as pb

FINISH_REASONS = {
    "": pb.FINISH_REASON_UNSPECIFIED,
    "length": pb.FINISH_REASON_LENGTH,
    "stop": pb.FINISH_REASON_STOP,
    "end": pb.FINISH_REASON_END,
}


def failed_chunk(session_id: str, err: Exception) -> pb.SessionAnswer:
    """A StreamMany chunk's error: its status and message (INTERNAL with an error id for a fault of ours)."""
    if isinstance(err, ServeError):
        return pb.SessionAnswer(session_id=session_id, code=status_of(err).value[0], message=str(err))
    return pb.SessionAnswer(session_id=session_id, code=grpc.StatusCode.INTERNAL.value[0], message=internal_error(f"StreamMany chunk of {session_id!r}", err))


def generate_request(request: pb.GenerateRequest) -> GenerateRequest:
    return GenerateRequest(request.prompt, sampling_request(request.sampling), request.label, request.source, request.session_id)


def sampling_request(message: pb.SamplingParams) -> SamplingRequest:
    def optional(name: str):
        return getattr(message, name) if message.HasField(name) else None

    return SamplingRequest(
        temperature=optional("temperature"),
        top_k=optional("top_k"),
        top_p=optional("top_p"),
        seed=optional("seed"),
        max_tokens=optional("max_tokens"),
        stop=tuple(message.stop),
    )


def generate_response(piece: GeneratedPiece) -> pb.GenerateResponse:
    return pb.GenerateResponse(
        text=piece.text,
        token_ids=piece.token_ids,
        finish_reason=FINISH_REASONS[piece.finish_reason],
        prompt_tokens=piece.prompt_tokens,
        generated_tokens=piece.generated_tokens,
        attention=[pb.Attention(weights=row) for row in piece.attention],
        source_tokens=piece.source_tokens,
    )


def stream_start(message: pb.StreamStart) -> StreamStart:
    return StreamStart(message.session_id, message.resume, message.top_k, message.acknowledged, message.score)


def chunk(message: pb.StreamRequest) -> Chunk:
    tensor = audio = None
    if message.HasField("values"):
        values = message.values
        tensor = TensorInput(values.name, values.dtype, tuple(values.shape), values.data)
    if message.HasField("audio"):
        encoding = AUDIO_ENCODINGS.get(message.audio.encoding, "")
        audio = AudioInput(encoding, message.audio.sample_rate, message.audio.data)
    ask = None
    if isinstance(message, pb.StreamRequest) and message.HasField("forecast"):  # a StreamMany chunk has none (yet)
        ask = ForecastAsk(message.forecast.horizon, message.forecast.paths, message.forecast.seed)
    return Chunk(message.reset, message.text, tuple(message.tokens), tensor, audio, ask)


AUDIO_ENCODINGS = {pb.Audio.PCM16: "pcm16", pb.Audio.FLOAT32: "float32"}


def infer_request(message: pb.InferRequest) -> InferRequest:
    return InferRequest(message.text, tuple(message.tokens), message.top_k)


def stream_response(result: ChunkResult, into: pb.StreamResponse | None = None) -> pb.StreamResponse:
    """The chunk's answer, written `into` a message (a SessionAnswer's, with no copy) or a new one."""
    response = pb.StreamResponse() if into is None else into
    response.session_id, response.position, response.behind = result.session_id, result.position, result.behind
    add_steps(response.steps, result.steps)
    add_candidates(response.classes, result.classes)
    add_outputs(response.outputs, result.outputs)
    if result.forecast:
        response.forecast.paths = result.forecast_paths
        add_outputs(response.forecast.outputs, result.forecast)
    return response


def add_outputs(tensors, outputs) -> None:
    """(name, float32 array) pairs into a message's repeated Tensor field."""
    for name, value in outputs:
        tensors.add(name=name, dtype="float32", shape=value.shape, data=np.asarray(value, "<f4").tobytes())


def session_answer(session_id: str, result: ChunkResult) -> pb.SessionAnswer:
    answer = pb.SessionAnswer(session_id=session_id)
    stream_response(result, answer.answer)
    return answer


def add_steps(steps, predictions: tuple[StepPrediction, ...]) -> None:
    """Each step's prediction added into a message's repeated field in place: building each message and copying it
    in cost a Stream's answer twice as much (13 against 8 µs for one step of five candidates)."""
    for prediction in predictions:
        step = steps.add(token_id=prediction.token_id, token_text=prediction.token_text, text=prediction.text, logprob=prediction.logprob)
        add_candidates(step.next, prediction.next)


def add_candidates(field, items: tuple[Candidate, ...]) -> None:
    """Candidates (next tokens, or classes) added into a message's repeated TokenProbability field in place."""
    for c in items:
        field.add(token_id=c.token_id, text=c.text, probability=c.probability)


def session_info(session: Session) -> pb.SessionInfo:
    card = session.model.card
    session_id, sequence_id = session.ids
    return pb.SessionInfo(session_id=session_id, sequence_id=sequence_id, model=card.name, version=card.version, position=session.position)


def model_info(model: Model, versions: list[str]) -> pb.ModelInfo:
    card, runtime = model.card, model.runtime
    defaults = card.sampling
    return pb.ModelInfo(
        name=card.name,
        version=card.version,
        versions=versions,
        task=card.task,
        cell=card.architecture.get("cell", ""),
        layers=card.architecture.get("layers", 0),
        hidden=card.architecture.get("hidden", 0),
        tokenizer=card.tokenizer["kind"],
        vocab_size=card.vocab_size,
        state=[pb.StateTensor(name=s.name, shape=s.shape, dtype="float32") for s in card.state],
        streaming=card.streaming,
        providers=runtime.providers,
        default_sampling=pb.SamplingParams(
            temperature=defaults.temperature, top_k=defaults.top_k, top_p=defaults.top_p, max_tokens=defaults.max_tokens
        ),
        metadata_json=json.dumps(card.document, ensure_ascii=False),
        active_sessions=runtime.slots_in_use,
        max_sessions=runtime.capacity,
        runtime_calls=runtime.calls,
        calls=card.calls,
        labels=card.labels,
        conditions=card.encoder.labels if card.encoder else (),
        max_source_tokens=card.encoder.max_source_tokens if card.encoder else 0,
        input=pb.InputInfo(name=card.input.name, dtype=card.input.dtype, step_shape=card.input.step, sample_rate=card.input.sample_rate),
        outputs=card.outputs,
    )
