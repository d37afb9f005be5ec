"""The KServe v2 / Open Inference Protocol service (`inference.GRPCInferenceService`) as Triton's clients
expect it: server and model metadata, ModelInfer, and Triton's ModelStreamInfer, over the same service as
the native API. The recurrent state stays on the server, in the sequence that Triton's `sequence_id`,
`sequence_start` and `sequence_end` parameters name; the tensors are converted in kserve_tensors.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from importlib import metadata

from rnnserve.contract import ModelCard
from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from rnnserve.inference import model_config_pb2 as config_pb
from rnnserve.server.api.access import looked_up, resolved, visible
from rnnserve.server.api.accounting import count, counted
from rnnserve.server.api.in_flight import InFlight
from rnnserve.server.api.kserve_tensors import (
    declared_inputs,
    infer_response,
    outputs_of,
    requested_outputs,
    stream_sequence,
    tensor_request,
)
from rnnserve.server.api.status import internal_error, status_of, streaming, unary
from rnnserve.server.config import ServerConfig
from rnnserve.server.errors import FailedPrecondition, NotFound, ServeError
from rnnserve.server.metrics import Metrics
from rnnserve.server.ordering import answers_in_sequence_order
from rnnserve.server.repository import Model, Repository
from rnnserve.server.requests import TensorResult
from rnnserve.server.runtime import Device
from rnnserve.server.statistics import Duration, InferenceStatistics
from rnnserve.server.tensors import TensorService

API = "kserve"
EXTENSIONS = ("sequence", "model_configuration", "classification", "statistics")
PLATFORM = "onnxruntime_onnx"
MAX_STREAM_IN_FLIGHT = 1024  # requests of one stream being worked on; reading waits beyond it


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, repository: Repository, tensors: TensorService, config: ServerConfig, metrics: Metrics, in_flight: InFlight):
        self._repository = repository
        self._tensors = tensors
        self.in_flight = in_flight
        self._config = config
        self._metrics = metrics
        self.serving = True  # false once shutting down: ServerReady says so

    @unary
    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @unary
    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        """Ready while every model is (as Triton's strict readiness)."""
        return pb.ServerReadyResponse(ready=self.serving and all(m.batcher.failure is None for m in self._repository.all()))

    @unary
    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        """Every model is loaded at start-up, so a model is ready exactly when it exists, unless its engine has stopped
        on a fault of its own."""
        try:
            model = looked_up(self._repository, request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.serving and model.batcher.failure is None)

    @unary
    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="rnnserve", version=metadata.version("rnnserve"), extensions=EXTENSIONS)

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        card = looked_up(self._repository, request.name, request.version).card

        def described(specs):
            return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

        return pb.ModelMetadataResponse(
            name=card.name,
            versions=self._repository.versions(card.name),
            platform=PLATFORM,
            inputs=described(declared_inputs(card)),
            outputs=described(outputs_of(card)),
        )

    @unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._model_config(looked_up(self._repository, request.name, request.version).card))

    @unary
    async def ModelStatistics(self, request: pb.ModelStatisticsRequest, context) -> pb.ModelStatisticsResponse:
        """Every version of the named model (or of every model the token covers), as Triton counts them."""
        if not request.name:
            models = visible(self._repository)
        elif request.version:
            models = [looked_up(self._repository, request.name, request.version)]
        else:
            newest = looked_up(self._repository, request.name, "")
            models = [self._repository.get(newest.card.name, v) for v in self._repository.versions(newest.card.name)]
        return pb.ModelStatisticsResponse(
            model_stats=[statistics_message(m.card.name, m.card.version, m.metrics.statistics) for m in models]
        )

    @unary
    async def RepositoryIndex(self, request: pb.RepositoryIndexRequest, context) -> pb.RepositoryIndexResponse:
        """Every model version the token covers; all are READY, since all are loaded at start."""
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(models=[index(name=m.card.name, version=m.card.version, state="READY") for m in visible(self._repository)])

    @unary
    async def RepositoryModelLoad(self, request: pb.RepositoryModelLoadRequest, context) -> pb.RepositoryModelLoadResponse:
        raise FailedPrecondition(self._fixed_repository("load", request.model_name))

    @unary
    async def RepositoryModelUnload(self, request: pb.RepositoryModelUnloadRequest, context) -> pb.RepositoryModelUnloadResponse:
        raise FailedPrecondition(self._fixed_repository("unload", request.model_name))

    def _fixed_repository(self, action: str, name: str) -> str:
        """Triton's explicit model control, which rnnserve does not have: what the operator can do instead."""
        known = [m.card.name for m in visible(self._repository)]
        state = f"model {name!r} is loaded" if name in known else f"there is no model {name!r} in it"
        return (
            f"cannot {action} model {name!r}: rnnserve loads its repository once, at start, and serves every model in it "
            f"({state}); to change what it serves, change {self._config.repository} and restart the server"
        )

    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await self._infer(request, "ModelInfer")

    @streaming
    async def ModelStreamInfer(self, requests, context):
        """Triton's stream: requests of different sequences run concurrently (and batch together), those of one
        sequence in the order they came; each answer, or error, is one response, and the stream goes on. When the
        stream ends, so do the sequences it started and left open."""
        owner = object()

        async def answer(request: pb.ModelInferRequest) -> pb.ModelStreamInferResponse:
            return await self.stream_answer(request, owner)

        def take_now(request: pb.ModelInferRequest, done) -> bool:
            return self._step_now(request, owner, done)

        try:
            async for response in answers_in_sequence_order(requests, stream_sequence, answer, MAX_STREAM_IN_FLIGHT, take_now):
                yield response
        finally:
            self.end_stream(owner)

    async def stream_answer(self, request: pb.ModelInferRequest, owner: object) -> pb.ModelStreamInferResponse:
        """A ModelStreamInfer request's answer, or its error: either way one response, and the stream goes on.
        `owner`: the stream, whose sequences end with it (end_stream)."""
        try:
            return pb.ModelStreamInferResponse(infer_response=await self._infer(request, "ModelStreamInfer", owner))
        except Exception as err:  # counted by _infer
            return stream_error(request, err)

    def models(self) -> list[Model]:
        """Every model version served."""
        return self._repository.all()

    def end_stream(self, owner: object) -> None:
        """A ModelStreamInfer stream has ended: so do the sequences it started and left open."""
        self._tensors.sessions.end_owned_by(owner)

    def _step_now(self, request: pb.ModelInferRequest, owner: object, done: Callable[[pb.ModelStreamInferResponse], None]) -> bool:
        """ModelStreamInfer's common request, a step of a sequence, answered as `_infer` would answer it but batched
        with the steps of every stream taken in the same turn of the event loop, with no task of its own
        (TensorService.step_now); False for any other request (a task answers it, by `_infer`)."""
        if len(request.inputs) != 1 or "sequence_id" not in request.parameters:
            return False
        try:
            model = looked_up(self._repository, request.model_name, request.model_version)
        except ServeError:
            return False  # `_infer` counts the refusal and answers it
        began, method, sequence = time.perf_counter(), "ModelStreamInfer", ""

        def failed(err: Exception) -> pb.ModelStreamInferResponse:
            """Counted as `counted` counts it: under its status, or INTERNAL for a fault of ours."""
            message, status = stream_refusal(err, f"ModelStreamInfer request {request.id!r}")
            count(self._metrics, model, API, method, status, time.perf_counter() - began, sequence)
            return error_response(request, message)

        def answered(result: TensorResult | ServeError) -> None:
            if isinstance(result, ServeError):
                return done(failed(result))
            try:
                response = pb.ModelStreamInferResponse(infer_response=infer_response(request, result, wanted, raw=bool(request.raw_input_contents)))
            except Exception as err:
                return done(failed(err))
            count(self._metrics, model, API, method, "", time.perf_counter() - began, sequence, result.position)
            done(response)

        try:
            wanted = requested_outputs(model.card, request)
            tensors = tensor_request(model.card, request, owner, wanted)
            sequence = tensors.sequence.id
            return self._tensors.step_now(model, tensors, answered)
        except Exception as err:
            asyncio.get_running_loop().call_soon(done, failed(err))
        return True

    async def infer(self, request: pb.ModelInferRequest, api: str) -> pb.ModelInferResponse:
        """ModelInfer's answer apart from gRPC (for KServe REST, api/kserve_rest.py), counted under `api`."""
        return await self._infer(request, "ModelInfer", api=api)

    async def _infer(self, request: pb.ModelInferRequest, method: str, owner: object = None, api: str = API) -> pb.ModelInferResponse:
        model = resolved(self._metrics, self._repository, api, method, request.model_name, request.model_version)
        with counted(self._metrics, model, api, method) as call:
            wanted = requested_outputs(model.card, request)  # checked before the sequence moves on
            tensors = tensor_request(model.card, request, owner, wanted)
            call.session = tensors.sequence.id
            result = await self._tensors.run(model, tensors)
            call.position = -1 if result.position is None else result.position
            return infer_response(request, result, wanted, raw=bool(request.raw_input_contents))

    def _model_config(self, card: ModelCard) -> config_pb.ModelConfig:
        """Triton's view of the model: batch as the first dimension (left out of `dims`), the declared inputs,
        and for a model that streams, a sequence batcher whose state is implicit (kept by the server)."""
        config = config_pb.ModelConfig(
            name=card.name,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=self._config.max_batch,
            default_model_filename="model.onnx",
            input=[
                config_pb.ModelInput(name=s.name, data_type=s.config_type, dims=s.shape[1:], optional=s.name not in ("tokens", card.input.name))
                for s in declared_inputs(card)
            ],
            output=[config_pb.ModelOutput(name=s.name, data_type=s.config_type, dims=s.shape[1:]) for s in outputs_of(card)],
            instance_group=[self._instance_group()],
            parameters={name: config_pb.ModelParameter(string_value=str(value)) for name, value in self._parameters(card).items()},
        )
        if card.streaming:
            config.sequence_batching.CopyFrom(
                config_pb.ModelSequenceBatching(
                    max_sequence_idle_microseconds=int(self._config.session_ttl_s * 1e6),
                    oldest=config_pb.ModelSequenceBatching.StrategyOldest(
                        max_candidate_sequences=self._config.max_sessions,
                        max_queue_delay_microseconds=int(self._config.max_queue_delay_ms * 1000),
                        preserve_ordering=True,
                    ),
                    state=[
                        config_pb.ModelSequenceBatching.State(
                            input_name=s.name, output_name=s.output, data_type=config_pb.TYPE_FP32, dims=s.shape,
                            initial_state=[config_pb.ModelSequenceBatching.InitialState(
                                data_type=config_pb.TYPE_FP32, dims=s.shape, zero_data=True, name=f"{s.name}_initial"
                            )],
                        )
                        for s in card.state
                    ],
                )
            )
        return config

    def _parameters(self, card: ModelCard) -> dict[str, object]:
        """What a client needs beyond the tensors: the task, a decoder's start and end tokens, the labels."""
        parameters: dict[str, object] = {"task": card.task}
        if card.bos is not None:
            parameters.update(bos_token=card.bos, eos_token=card.eos)
        if card.encoder is not None and card.encoder.labels:
            parameters["labels"] = ",".join(card.encoder.labels)
        if card.encoder is not None and card.encoder.max_source_tokens:
            parameters["max_source_tokens"] = card.encoder.max_source_tokens
        return parameters

    def _instance_group(self) -> config_pb.ModelInstanceGroup:
        device = Device.parse(self._config.device)
        if device.kind == "cuda":
            return config_pb.ModelInstanceGroup(name="runtime", count=1, kind=config_pb.ModelInstanceGroup.KIND_GPU, gpus=[device.index])
        return config_pb.ModelInstanceGroup(name="runtime", count=1, kind=config_pb.ModelInstanceGroup.KIND_CPU)


def statistics_message(name: str, version: str, stats: InferenceStatistics) -> pb.ModelStatistics:
    def duration(d: Duration) -> pb.StatisticDuration:
        return pb.StatisticDuration(count=d.count, ns=d.ns)

    return pb.ModelStatistics(
        name=name,
        version=version,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=duration(stats.success), fail=duration(stats.fail), queue=duration(stats.queue),
            compute_input=duration(stats.compute_input), compute_infer=duration(stats.compute_infer),
            compute_output=duration(stats.compute_output), cache_hit=pb.StatisticDuration(), cache_miss=pb.StatisticDuration(),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size, compute_input=duration(b.compute_input), compute_infer=duration(b.compute_infer),
                compute_output=duration(b.compute_output),
            )
            for size, b in sorted(list(stats.batches.items()))  # list(): one step, while the engine thread may add a size
        ],
    )


def stream_error(request: pb.ModelInferRequest, err: Exception) -> pb.ModelStreamInferResponse:
    """A request's error on a stream: the client's (its message), or a fault of ours (INTERNAL's message); either
    way this request fails and the stream goes on."""
    return error_response(request, stream_refusal(err, f"ModelStreamInfer request {request.id!r}")[0])


def stream_refusal(err: Exception, where: str) -> tuple[str, str]:
    """A stream request's error as it is answered and counted: (message, status name). A fault of ours is INTERNAL,
    its message naming the error id that the log line (at `where`) carries."""
    if isinstance(err, ServeError):
        return str(err), status_of(err).name
    return internal_error(where, err), "INTERNAL"


def error_response(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """An error on a stream, with the request's id so a client can tell which request failed."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id),
    )
