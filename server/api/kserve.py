"""The KServe v2 / Open Inference Protocol service (`inference.GRPCInferenceService`) as Triton's clients
expect it: protobuf tensors ⇄ domain requests, Triton's sequence parameters ⇄ sequences, errors ⇄ statuses.

Every model takes `tokens` (INT64 [batch, steps]) or `text` (BYTES [batch, 1]) and answers `logits`
(FP32 [batch, steps, outputs]); its recurrent state stays on the server, in the sequence that Triton's
`sequence_id`, `sequence_start` and `sequence_end` parameters name. A model with an encoder also reads a
`label` or `source` when a sequence starts, and an encoder–decoder also answers `attention`.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from rnnserve.inference import model_config_pb2 as config_pb
from server.api.status import counted, streaming, unary
from server.card import ModelCard
from server.config import ServerConfig
from server.errors import InvalidArgument, NotFound, ServeError
from server.metrics import Metrics
from server.runtime import Device
from server.service import InferenceService, SequenceControl, TensorRequest, TensorResult
from training.text import token_text

log = logging.getLogger(__name__)

API = "kserve"
EXTENSIONS = ("sequence", "model_configuration", "classification")
PLATFORM = "onnxruntime_onnx"
MAX_STREAM_IN_FLIGHT = 1024  # requests of one stream being worked on; reading waits beyond it


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # with the batch dimension; -1: any length
    config_type: int  # Triton's DataType


def inputs_of(card: ModelCard) -> tuple[TensorSpec, ...]:
    """Token ids or text the server tokenizes (either), and for a model with an encoder the label or source
    each sequence starts from."""
    inputs = (
        TensorSpec("tokens", "INT64", (-1, -1), config_pb.TYPE_INT64),
        TensorSpec("text", "BYTES", (-1, 1), config_pb.TYPE_STRING),
    )
    if card.encoder is not None:
        inputs += (TensorSpec(card.encoder.input, "BYTES", (-1, 1), config_pb.TYPE_STRING),)
    return inputs


def outputs_of(card: ModelCard) -> tuple[TensorSpec, ...]:
    """logits, and an encoder–decoder's attention over the source rows (padded to the longest source it reads)."""
    return tuple(TensorSpec(name, "FP32", (-1, -1, width), config_pb.TYPE_FP32) for name, width in card.output_widths.items())


class KServeServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: InferenceService, config: ServerConfig, metrics: Metrics):
        self._service = service
        self._repository = service.repository
        self._config = config
        self._metrics = metrics
        self.serving = True  # false once shutting down: ServerReady says so

    async def ServerLive(self, request, context) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.serving)

    async def ModelReady(self, request: pb.ModelReadyRequest, context) -> pb.ModelReadyResponse:
        """Every model is loaded at start-up, so a model is ready exactly when it exists."""
        try:
            self._repository.get(request.name, request.version)
        except NotFound:
            return pb.ModelReadyResponse(ready=False)
        return pb.ModelReadyResponse(ready=self.serving)

    async def ServerMetadata(self, request, context) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="rnnserve", version=metadata.version("rnnserve"), extensions=EXTENSIONS)

    @unary
    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context) -> pb.ModelMetadataResponse:
        card = self._repository.get(request.name, request.version).card

        def described(specs):
            return [pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype, shape=s.shape) for s in specs]

        return pb.ModelMetadataResponse(
            name=card.name,
            versions=self._repository.versions(card.name),
            platform=PLATFORM,
            inputs=described(inputs_of(card)),
            outputs=described(outputs_of(card)),
        )

    @unary
    async def ModelConfig(self, request: pb.ModelConfigRequest, context) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._model_config(self._repository.get(request.name, request.version).card))

    @unary
    async def ModelInfer(self, request: pb.ModelInferRequest, context) -> pb.ModelInferResponse:
        return await self._infer(request, "ModelInfer")

    @streaming
    async def ModelStreamInfer(self, requests, context):
        """Triton's stream: requests of different sequences run concurrently (and batch together), those of one
        sequence in the order they came; each answer, or error, is one response, and the stream goes on. When the
        stream ends, so do the sequences it started and left open."""
        owner = object()
        responses: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        in_flight = asyncio.Semaphore(MAX_STREAM_IN_FLIGHT)
        last_of_sequence: dict[tuple[str, str], asyncio.Task] = {}
        tasks: set[asyncio.Task] = set()

        async def answer(request: pb.ModelInferRequest, before: asyncio.Task | None) -> None:
            try:
                if before is not None:
                    await asyncio.wait([before])
                response = pb.ModelStreamInferResponse(infer_response=await self._infer(request, "ModelStreamInfer", owner))
            except ServeError as err:
                response = error_response(request, str(err))
            except Exception as err:  # a fault of ours: this request fails, the stream goes on
                log.exception("ModelStreamInfer request %r failed", request.id)
                response = error_response(request, f"internal error: {err}")
            finally:
                in_flight.release()
            responses.put_nowait(response)

        async def read() -> None:
            try:
                async for request in requests:
                    await in_flight.acquire()
                    key = (request.model_name, sequence_key(request))
                    task = asyncio.create_task(answer(request, last_of_sequence.get(key) if key[1] else None))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                    if key[1]:
                        last_of_sequence[key] = task
                        task.add_done_callback(lambda t, key=key: last_of_sequence.get(key) is t and last_of_sequence.pop(key))
                await asyncio.gather(*tasks)
            finally:
                responses.put_nowait(None)  # the last response: the stream's end, or the reader's failure

        reader = asyncio.create_task(read())
        try:
            while (response := await responses.get()) is not None:
                yield response
            await reader
        finally:
            for task in (reader, *tasks):
                task.cancel()
            await asyncio.gather(reader, *tasks, return_exceptions=True)
            self._service.sessions.end_owned_by(owner)

    async def _infer(self, request: pb.ModelInferRequest, method: str, owner: object = None) -> pb.ModelInferResponse:
        with counted(self._metrics, self._repository, API, method, request.model_name, request.model_version):
            card = self._repository.get(request.model_name, request.model_version).card
            wanted = requested_outputs(card, request)  # checked before the sequence moves on
            result = await self._service.run_tensors(tensor_request(card, request, owner))
            return infer_response(request, result, wanted, raw=bool(request.raw_input_contents))

    def _model_config(self, card: ModelCard) -> config_pb.ModelConfig:
        """Triton's view of the model: batch as the first dimension (left out of `dims`), inputs either-or,
        and for a model that streams, a sequence batcher whose state is implicit (kept by the server)."""
        config = config_pb.ModelConfig(
            name=card.name,
            platform=PLATFORM,
            backend="onnxruntime",
            max_batch_size=self._config.max_batch,
            default_model_filename="model.onnx",
            input=[config_pb.ModelInput(name=s.name, data_type=s.config_type, dims=s.shape[1:], optional=True) for s in inputs_of(card)],
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


# protobuf → domain


def sequence_key(request: pb.ModelInferRequest) -> str:
    """The request's sequence id ("" for none), to keep a stream's requests of one sequence in order; a request
    whose id is malformed belongs to no sequence, and gets its error when it runs."""
    try:
        return sequence_id(request.parameters)
    except InvalidArgument:
        return ""


def sequence_id(parameters) -> str:
    """Triton's sequence_id, as int64 (or uint64) or string; 0 or "" (or none) mean no sequence."""
    if "sequence_id" not in parameters:
        return ""
    parameter = parameters["sequence_id"]
    kind = parameter.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param", "string_param"):
        raise InvalidArgument("parameters[sequence_id]", f"must be an int64_param or a string_param, not {kind or 'empty'}")
    value = getattr(parameter, kind)
    return "" if value in (0, "") else str(value)


def sequence_control(request: pb.ModelInferRequest) -> SequenceControl:
    """Triton's sequence parameters: sequence_id, and sequence_start and sequence_end as bool."""
    parameters = request.parameters
    sequence = sequence_id(parameters)
    flags = {}
    for name in ("sequence_start", "sequence_end"):
        parameter = parameters.get(name)
        kind = parameter.WhichOneof("parameter_choice") if parameter is not None else None
        if parameter is not None and kind != "bool_param":
            raise InvalidArgument(f"parameters[{name}]", f"must be a bool_param, not {kind or 'empty'}")
        flags[name] = parameter is not None and parameter.bool_param
        if flags[name] and not sequence:
            raise InvalidArgument(f"parameters[{name}]", "needs a sequence_id (a non-zero int64 or a non-empty string)")
    return SequenceControl(sequence, flags["sequence_start"], flags["sequence_end"])


def tensor_request(card: ModelCard, request: pb.ModelInferRequest, owner: object) -> TensorRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            "raw_input_contents", f"{len(raw)} entries for {len(request.inputs)} inputs: send one per input, in order, or none"
        )
    specs = {s.name: s for s in inputs_of(card)}
    arrays: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        spec = specs.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"inputs[{tensor.name}]", f"model {card.name!r} has no such input; it takes " + " or ".join(describe(s) for s in specs.values())
            )
        if tensor.name in arrays:
            raise InvalidArgument(f"inputs[{tensor.name}]", "is sent twice")
        arrays[tensor.name] = input_array(spec, tensor, raw[index] if raw else None)
    starts = card.encoder.input if card.encoder else ""
    return TensorRequest(
        card.name, card.version, arrays.get("tokens"), strings(arrays, "text"), strings(arrays, starts), sequence_control(request), owner
    )


def strings(arrays: dict[str, np.ndarray], name: str) -> tuple[str, ...]:
    """A BYTES input [batch, 1] as one string per row."""
    if name not in arrays:
        return ()
    try:
        return tuple(element.decode("utf-8") for element in arrays[name][:, 0])
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"inputs[{name}]", f"is not UTF-8: {err}") from None


def describe(spec: TensorSpec) -> str:
    return f"{spec.name} ({spec.datatype} {list(spec.shape)})"


def input_array(spec: TensorSpec, tensor, raw: bytes | None) -> np.ndarray:
    """The tensor's elements as an array of its declared shape, from `contents` or from raw bytes."""
    field = f"inputs[{tensor.name}]"
    if tensor.datatype != spec.datatype:
        raise InvalidArgument(field, f"datatype {tensor.datatype or '(none)'}: this input is {describe(spec)}")
    shape = tuple(tensor.shape)
    if len(shape) != len(spec.shape) or any(d < 0 or (want >= 0 and d != want) for d, want in zip(shape, spec.shape)):
        raise InvalidArgument(field, f"shape {list(shape)} does not fit {list(spec.shape)} (-1: any length)")
    count = int(np.prod(shape))
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgument(field, "has contents as well as raw_input_contents: send one or the other")
        elements = split_bytes(raw, field) if spec.datatype == "BYTES" else raw_numbers(raw, count, field)
    elif spec.datatype == "BYTES":
        elements = list(tensor.contents.bytes_contents)
    else:
        elements = tensor.contents.int64_contents
    if len(elements) != count:
        raise InvalidArgument(field, f"{len(elements)} elements for shape {list(shape)}, which holds {count}")
    if spec.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    return np.asarray(elements, dtype=np.int64).reshape(shape)


def raw_numbers(raw: bytes, count: int, field: str) -> np.ndarray:
    if len(raw) != count * 8:
        raise InvalidArgument(field, f"raw contents of {len(raw)} bytes; {count} INT64 elements take {count * 8}")
    return np.frombuffer(raw, dtype="<i8")


def split_bytes(raw: bytes, field: str) -> list[bytes]:
    """KServe's raw BYTES: each element is its length (4-byte little-endian) and then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise InvalidArgument(field, f"raw BYTES contents end inside an element's 4-byte length (at byte {offset})")
        (length,) = struct.unpack_from("<I", raw, offset)
        if offset + 4 + length > len(raw):
            raise InvalidArgument(field, f"raw BYTES element at byte {offset} says {length} bytes, but {len(raw) - offset - 4} remain")
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    return elements


def requested_outputs(card: ModelCard, request: pb.ModelInferRequest) -> list[tuple[str, int]]:
    """(output name, classification top-k or 0) for each output to send: those asked for, or all."""
    names = [s.name for s in outputs_of(card)]
    if not request.outputs:
        return [(name, 0) for name in names]
    wanted = []
    for output in request.outputs:
        field = f"outputs[{output.name}]"
        if output.name not in names:
            raise InvalidArgument(field, f"model {card.name!r} has no such output; its outputs: {', '.join(names)}")
        classes = output.parameters.get("classification")
        top_k = 0
        if classes is not None:
            top_k = classes.int64_param or classes.uint64_param
            if output.name != "logits":
                raise InvalidArgument(f"{field}.parameters[classification]", "only logits can be classified")
            if not 1 <= top_k <= card.output_size:
                raise InvalidArgument(f"{field}.parameters[classification]", f"{top_k} is not in [1, {card.output_size}]")
        wanted.append((output.name, top_k))
    return wanted


# domain → protobuf


def error_response(request: pb.ModelInferRequest, message: str) -> pb.ModelStreamInferResponse:
    """An error on a stream, with the request's id so a client can tell which request failed."""
    return pb.ModelStreamInferResponse(
        error_message=message,
        infer_response=pb.ModelInferResponse(model_name=request.model_name, model_version=request.model_version, id=request.id),
    )


def infer_response(request: pb.ModelInferRequest, result: TensorResult, wanted: list[tuple[str, int]], raw: bool) -> pb.ModelInferResponse:
    """Outputs in the form the inputs came in: raw contents answer raw contents (what Triton's clients read)."""
    card = result.model.card
    response = pb.ModelInferResponse(model_name=card.name, model_version=card.version, id=request.id)
    for name, top_k in wanted:
        array = result.outputs[name] if not top_k else classification(result, name, top_k)
        datatype = "BYTES" if top_k else "FP32"
        output = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(join_bytes(array) if top_k else array.astype("<f4").tobytes())
        elif top_k:
            output.contents.bytes_contents.extend(array.ravel().tolist())
        else:
            output.contents.fp32_contents.extend(array.ravel().tolist())
    return response


def classification(result: TensorResult, name: str, top_k: int) -> np.ndarray:
    """Triton's classification extension: per step the top-k outputs as b"value:index:label", most likely
    first, where value is the output itself (a logit) and label the class or the token as text."""
    card, model = result.model.card, result.model
    batch, steps, _ = result.outputs[name].shape
    flat = result.outputs[name].reshape(batch * steps, -1)
    order = np.argsort(-flat, axis=1, kind="stable")[:, :top_k]
    labels, special = card.labels, {card.bos: "<bos>", card.eos: "<eos>"}
    out = np.empty((batch * steps, top_k), dtype=object)
    for row, indices in enumerate(order):
        for column, index in enumerate(indices):
            label = labels[index] if labels else special.get(int(index)) or token_text(model.tokenizer, int(index))
            out[row, column] = f"{flat[row, index]:f}:{index}:{label}".encode()
    return out.reshape(batch, steps, top_k)


def join_bytes(array: np.ndarray) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in array.ravel())
