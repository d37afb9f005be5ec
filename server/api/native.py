"""The rnnserve.v1 service: converts protobuf to domain requests, calls the service, converts back."""

from __future__ import annotations

import asyncio
import json
import time
from contextlib import AsyncExitStack

import grpc
import numpy as np

from rnnserve.server.api.access import looked_up, resolved, visible
from rnnserve.server.api.accounting import count, count_together, counted
from rnnserve.server.api.in_flight import InFlight
from rnnserve.server.api.status import internal_error, status_of, streaming, unary
from rnnserve.server.errors import InvalidArgument, ServeError
from rnnserve.server.metrics import Metrics
from rnnserve.server.multiplexed import Multiplexed, rounds
from rnnserve.server.repository import Model, Repository
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
from rnnserve.server.security import authorize
from rnnserve.server.service import InferenceService
from rnnserve.server.sessions import Session
from rnnserve.server.snapshots import Snapshots
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

FINISH_REASONS = {
    "": pb.FINISH_REASON_UNSPECIFIED,
    "length": pb.FINISH_REASON_LENGTH,
    "stop": pb.FINISH_REASON_STOP,
    "end": pb.FINISH_REASON_END,
}


API = "native"


class NativeServicer(pb_grpc.RnnServeServicer):
    def __init__(self, repository: Repository, service: InferenceService, snapshots: Snapshots, metrics: Metrics, in_flight: InFlight):
        self._repository = repository
        self._service = service
        self._snapshots = snapshots
        self._metrics = metrics
        self.in_flight = in_flight

    @unary
    async def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(models=self.model_infos())

    def model_infos(self) -> list[pb.ModelInfo]:
        """What ListModels answers: every model the current caller may use (for gRPC, or api/native_http.py)."""
        return [self._model_info(m) for m in visible(self._repository)]

    @unary
    async def GetModel(self, request: pb.GetModelRequest, context) -> pb.ModelInfo:
        return self._model_info(looked_up(self._repository, request.model, request.version))

    @streaming
    async def Generate(self, request: pb.GenerateRequest, context):
        async for piece in self.generate(request.model, request.version, generate_request(request)):
            yield generate_response(piece)

    async def generate(self, name: str, version: str, request: GenerateRequest, api: str = API):
        """A Generate call's pieces, apart from the transport: gRPC's, or OpenAI's completions (api/completions.py)."""
        model = self._resolved("Generate", name, version, api)
        with self._counted(model, "Generate", api):
            async for piece in self._service.generate(model, request):
                yield piece

    def models(self):
        """The models the current caller may use."""
        return visible(self._repository)

    @streaming
    async def Stream(self, requests, context):
        async for response in self.stream(requests):
            yield response

    async def stream(self, requests, api: str = API):
        """A Stream call's answers to its messages, apart from the transport: gRPC's, or a WebSocket's
        (server/api/websocket.py), counted under `api`."""
        first = await anext(aiter(requests), None)
        if first is None:
            return
        if not first.HasField("start") or not first.start.model:
            raise InvalidArgument("start.model", "the first message of a stream must name the model in `start`")
        model = self._resolved("Stream", first.start.model, first.start.version, api)
        async with AsyncExitStack() as stack:
            with self._counted(model, "Stream", api) as call:  # each chunk is one request; the first also opens the stream
                consume = await stack.enter_async_context(self._service.open_stream(model, stream_start(first.start)))
                result = await consume(chunk(first))
                call.session, call.position = result.session_id, result.position
            yield stream_response(result)
            async for request in requests:
                if request.HasField("start"):
                    raise InvalidArgument("start", "only the first message of a stream may carry `start`")
                with self._counted(model, "Stream", api) as call:
                    call.session = result.session_id
                    result = await consume(chunk(request))
                    call.position = result.position
                yield stream_response(result)

    @streaming
    async def StreamMany(self, requests, context):
        async with Multiplexed(self._service) as streams:
            async for request in requests:
                entries = list(request.chunks)
                answers: list[pb.SessionAnswer | None] = [None] * len(entries)

                async def alone(index: int) -> None:
                    answers[index] = await self._many_chunk(streams, entries[index])

                for indices in rounds(entries, lambda entry: entry.session_id):  # a session's chunks in their order
                    together = [i for i in indices if not entries[i].HasField("start") and streams.together(entries[i].session_id)]
                    others = sorted(set(indices) - set(together))
                    await asyncio.gather(self._many_together(streams, entries, together, answers), *(alone(i) for i in others))
                response = pb.StreamManyResponse(answers=answers)
                if request.HasField("rows"):
                    await self._many_rows(streams, request.rows, response.rows)
                yield response

    async def _many_chunk(self, streams: Multiplexed, entry: pb.SessionChunk) -> pb.SessionAnswer:
        """One chunk of a StreamMany message, answered or failed alone."""
        session_id = entry.session_id
        try:
            if not session_id:
                raise InvalidArgument("chunks.session_id", "name the session each chunk is for")
            if entry.HasField("start"):
                if entry.start.session_id not in ("", session_id):
                    raise InvalidArgument("start.session_id", f"{entry.start.session_id!r} is not this chunk's session, {session_id!r}")
                start = StreamStart(session_id, entry.start.resume, entry.start.top_k, entry.start.acknowledged)
                await streams.open(session_id, self._resolved("StreamMany", entry.start.model, entry.start.version), start)
            with self._counted(streams.session(session_id).model, "StreamMany") as call:
                call.session = session_id
                result = await streams.consume(session_id, chunk(entry))
                call.position = result.position
            if entry.close:
                await streams.close(session_id)
            return session_answer(session_id, result)
        except Exception as err:  # this chunk fails (INTERNAL, for a fault of ours), the stream goes on
            return failed_chunk(session_id, err)

    async def _many_together(self, streams: Multiplexed, entries: list, indices: list[int], answers: list) -> None:
        """Chunks of open sessions of models that take values, one a session: stepped together, answered each alone."""
        if not indices:
            return
        began = time.perf_counter()
        sessions = [streams.session(entries[i].session_id) for i in indices]
        results = await self._service.consume_values_together([(s, chunk(entries[i])) for s, i in zip(sessions, indices)])
        seconds = time.perf_counter() - began
        answered: dict[int, tuple[Model, list[tuple[str, int]]]] = {}  # id(model) → the model, its chunks answered
        for index, session, result in zip(indices, sessions, results):
            entry = entries[index]
            if isinstance(result, ServeError):
                count(self._metrics, session.model, API, "StreamMany", status_of(result).name, seconds, entry.session_id)
                answers[index] = failed_chunk(entry.session_id, result)
                continue
            answered.setdefault(id(session.model), (session.model, []))[1].append((entry.session_id, result.position))
            if entry.close:
                await streams.close(entry.session_id)
            answers[index] = session_answer(entry.session_id, result)
        for model, calls in answered.values():
            count_together(self._metrics, model, API, "StreamMany", seconds, calls)

    async def _many_rows(self, streams: Multiplexed, rows: pb.SessionRows, answer: pb.SessionRowsAnswer) -> None:
        """A message's rows: stepped together, answered as arrays, row for row."""
        began = time.perf_counter()
        ids = list(rows.session_ids)
        sessions = streams.rows(ids)
        values = rows.values
        try:
            result = await self._service.consume_rows(sessions, TensorInput(values.name, values.dtype, tuple(values.shape), values.data))
        except Exception as err:  # a fault of ours: every row fails with its error id, the stream goes on
            message = internal_error("StreamMany rows", err)
            answer.codes.extend([grpc.StatusCode.INTERNAL.value[0]] * len(ids))
            answer.messages.extend([message] * len(ids))
            answer.positions.extend([0] * len(ids))
            return
        seconds = time.perf_counter() - began
        answer.positions.extend(result.positions)
        answer.codes.extend(0 if error is None else status_of(error).value[0] for error in result.errors)
        answer.messages.extend("" if error is None else str(error) for error in result.errors)
        add_outputs(answer.outputs, result.outputs)
        answered = [(session_id, position) for session_id, position, error in zip(ids, result.positions, result.errors) if error is None]
        if answered:
            model = next(s for s, e in zip(sessions, result.errors) if e is None).model
            count_together(self._metrics, model, API, "StreamMany", seconds, answered)
        for session, error in zip(sessions, result.errors):
            if error is not None and not isinstance(session, ServeError):
                count(self._metrics, session.model, API, "StreamMany", status_of(error).name, seconds, session.id)
        if rows.close:
            for session_id, session in zip(ids, sessions):
                if not isinstance(session, ServeError):
                    await streams.close(session_id)

    @unary
    async def Infer(self, request: pb.InferRequest, context) -> pb.InferResponse:
        model = self._resolved("Infer", request.model, request.version)
        with self._counted(model, "Infer"):
            result = await self._service.infer(model, infer_request(request))
        response = pb.InferResponse()
        add_steps(response.steps, result.steps)
        add_candidates(response.classes, result.classes)
        return response

    @unary
    async def CloseSession(self, request: pb.CloseSessionRequest, context) -> pb.CloseSessionResponse:
        authorize(self._service.sessions.named(request.session_id).model.card.name)
        self._service.close_session(request.session_id)
        return pb.CloseSessionResponse()

    @unary
    async def SnapshotSession(self, request: pb.SessionRef, context) -> pb.SessionSnapshot:
        session = self._live(request)
        blob = await self._snapshots.snapshot(session)
        card = session.model.card
        return pb.SessionSnapshot(blob=blob, model=card.name, version=card.version, position=session.position)

    @unary
    async def RestoreSession(self, request: pb.RestoreSessionRequest, context) -> pb.SessionInfo:
        if request.session_id and request.sequence_id:
            raise InvalidArgument("session_id", "restore under a session_id or a sequence_id, not both")
        authorize(self._snapshots.header(request.blob)["model"])
        snapshot = self._snapshots.read(request.blob)
        return session_info(await self._service.sessions.restore(snapshot, request.session_id, request.sequence_id))

    @unary
    async def ForkSession(self, request: pb.ForkSessionRequest, context) -> pb.SessionInfo:
        session = self._live(request.source)
        return session_info(await self._service.sessions.fork(session, request.session_id, request.sequence_id))

    def _live(self, ref: pb.SessionRef):
        """The live named session or KServe sequence a request names, if its token covers the model."""
        if bool(ref.session_id) == bool(ref.sequence_id):
            raise InvalidArgument("session_id", "name a session (session_id), or a KServe sequence (model and sequence_id)")
        model = looked_up(self._repository, ref.model, ref.version) if ref.sequence_id else None
        sessions = self._service.sessions
        session = sessions.live_sequence(model, ref.sequence_id) if ref.sequence_id else sessions.named(ref.session_id)
        authorize(session.model.card.name)
        return session

    def _resolved(self, method: str, name: str, version: str, api: str = API) -> Model:
        return resolved(self._metrics, self._repository, api, method, name, version)

    def _counted(self, model: Model, method: str, api: str = API):
        return counted(self._metrics, model, api, method)

    def _model_info(self, model: Model) -> pb.ModelInfo:
        return model_info(model, self._repository.versions(model.card.name))


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
