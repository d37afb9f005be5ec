"""The rnnserve.v1 service: reads a message into a domain request (native_messages.py), calls the service, writes the
answer back."""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack

import grpc

from rnnserve.server.api.access import looked_up, resolved, visible
from rnnserve.server.api.accounting import count, count_together, counted
from rnnserve.server.api.in_flight import InFlight
from rnnserve.server.api.native_messages import (
    add_candidates,
    add_outputs,
    add_steps,
    chunk,
    failed_chunk,
    generate_request,
    generate_response,
    infer_request,
    model_info,
    session_answer,
    session_info,
    stream_response,
    stream_start,
)
from rnnserve.server.api.status import internal_error, status_of, streaming, unary
from rnnserve.server.errors import InvalidArgument, ServeError
from rnnserve.server.metrics import Metrics
from rnnserve.server.multiplexed import Multiplexed, rounds
from rnnserve.server.repository import Model, Repository
from rnnserve.server.requests import GenerateRequest, StreamStart, TensorInput
from rnnserve.server.security import authorize
from rnnserve.server.service import InferenceService
from rnnserve.server.snapshots import Snapshots
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc as pb_grpc

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
