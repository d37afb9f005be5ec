"""KServe v2 tensors ⇄ rnnserve's tensor requests: which tensors a model takes and answers, Triton's sequence
parameters, input decoding from `contents` or raw bytes (with errors that name the tensor), and outputs in
the form the inputs came in, Triton's classification included.

A token model takes `tokens` (INT64 [batch, steps]) or `text` (BYTES [batch, 1]; accepted, not declared) and answers
`logits` (FP32 [batch, steps, outputs]). A model with an encoder also reads a `label` or `source` when a sequence
starts, and an encoder–decoder also answers `attention`. A model that takes values takes its input as FP32
[batch, steps, *step] (Silero VAD: `input` [1, steps, 512]) and answers each of its outputs as FP32 [batch, steps, width].

Beyond Triton, a sequence's responses carry `sequence_position` (the tokens it has consumed), and a request may
carry the position the client has had answered: a sequence that is elsewhere (restored from a state store that
was behind) is refused with FAILED_PRECONDITION naming its position, so the client can send its requests from
there again instead of going on from the wrong state.
"""

from __future__ import annotations

import functools
import math
import struct
from dataclasses import dataclass

import numpy as np

from rnnserve.contract import ModelCard
from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.inference import model_config_pb2 as config_pb
from rnnserve.server.errors import InvalidArgument
from rnnserve.server.requests import SequenceControl, TensorRequest, TensorResult
from rnnserve.text import token_text

POSITION = "sequence_position"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # with the batch dimension; -1: any length
    config_type: int  # Triton's DataType


def inputs_of(card: ModelCard) -> tuple[TensorSpec, ...]:
    """Token ids or text the server tokenizes (either), and for a model with an encoder the label or source
    each sequence starts from; or the values a model takes."""
    if card.input.values:
        return _values_input(card.input.name, card.input.step)
    return _inputs(card.encoder.input if card.encoder is not None else None)


def declared_inputs(card: ModelCard) -> tuple[TensorSpec, ...]:
    """The inputs ModelMetadata and ModelConfig declare: token ids, and a label or source for a model with an
    encoder. `text`, which the server tokenizes, is accepted in place of `tokens` but not declared: Triton's tools
    send every declared input (perf_analyzer makes up data for each, BYTES ones even when marked optional), and a
    request must not carry both."""
    return tuple(s for s in inputs_of(card) if s.name != "text")


def outputs_of(card: ModelCard) -> tuple[TensorSpec, ...]:
    """logits, and an encoder–decoder's attention over the source rows (padded to the longest source it reads)."""
    return _outputs(tuple(card.output_widths.items()))


@functools.cache  # asked on every request, and the same for every model of a kind
def _inputs(starts_from: str | None) -> tuple[TensorSpec, ...]:
    inputs = (
        TensorSpec("tokens", "INT64", (-1, -1), config_pb.TYPE_INT64),
        TensorSpec("text", "BYTES", (-1, 1), config_pb.TYPE_STRING),
    )
    if starts_from is not None:
        inputs += (TensorSpec(starts_from, "BYTES", (-1, 1), config_pb.TYPE_STRING),)
    return inputs


@functools.cache
def _values_input(name: str, step: tuple[int, ...]) -> tuple[TensorSpec, ...]:
    return (TensorSpec(name, "FP32", (-1, -1, *step), config_pb.TYPE_FP32),)


@functools.cache
def _outputs(widths: tuple[tuple[str, int], ...]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(name, "FP32", (-1, -1, width), config_pb.TYPE_FP32) for name, width in widths)


@functools.cache
def _by_name(specs: tuple[TensorSpec, ...]) -> dict[str, TensorSpec]:
    return {s.name: s for s in specs}


# protobuf → domain


def stream_sequence(request: pb.ModelInferRequest) -> tuple[str, str] | None:
    """(model, sequence id) of the request, to keep a stream's requests of one sequence in order; None for a
    request of no sequence, or whose id is malformed (it gets its error when it runs)."""
    try:
        sequence = sequence_id(request.parameters)
    except InvalidArgument:
        return None
    return (request.model_name, sequence) if sequence else None


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
    """Triton's sequence parameters: sequence_id, and sequence_start and sequence_end as bool; and rnnserve's own
    sequence_position (int64: the tokens the client has had answered in the sequence before this request)."""
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
    return SequenceControl(sequence, flags["sequence_start"], flags["sequence_end"], sequence_position(parameters, sequence, flags["sequence_start"]))


def sequence_position(parameters, sequence: str, start: bool) -> int | None:
    parameter = parameters.get(POSITION)
    if parameter is None:
        return None
    kind, field = parameter.WhichOneof("parameter_choice"), f"parameters[{POSITION}]"
    if kind not in ("int64_param", "uint64_param") or getattr(parameter, kind) < 0:
        raise InvalidArgument(field, "must be an int64_param of at least 0: the tokens this sequence had consumed before this request")
    if not sequence:
        raise InvalidArgument(field, "needs a sequence_id")
    position = getattr(parameter, kind)
    if start and position:
        raise InvalidArgument(field, f"is {position} on a request that starts the sequence: a sequence starts at 0")
    return position


CLASS_BYTES = 32  # one classification entry ("0.123456:42:label") as a BYTES element, about


def answer_bytes_per_step(card: ModelCard, wanted: list[tuple[str, int]]) -> int:
    """What one row's step adds to the answer: FP32 values, or a classification's strings."""
    widths = card.output_widths
    return sum(top_k * CLASS_BYTES if top_k else widths[name] * 4 for name, top_k in wanted)


def tensor_request(card: ModelCard, request: pb.ModelInferRequest, owner: object, wanted: list[tuple[str, int]]) -> TensorRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            "raw_input_contents", f"{len(raw)} entries for {len(request.inputs)} inputs: send one per input, in order, or none"
        )
    specs = _by_name(inputs_of(card))
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
        arrays.get("tokens"), arrays.get(card.input.name) if card.input.values else None, strings(arrays, "text"),
        strings(arrays, starts), sequence_control(request), owner, answer_bytes_per_step(card, wanted),
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
    count = math.prod(shape)
    if raw is not None:
        if tensor.HasField("contents"):
            raise InvalidArgument(field, "has contents as well as raw_input_contents: send one or the other")
        elements = split_bytes(raw, field) if spec.datatype == "BYTES" else raw_numbers(raw, count, field, spec.datatype)
    elif spec.datatype == "BYTES":
        elements = list(tensor.contents.bytes_contents)
    else:
        elements = tensor.contents.fp32_contents if spec.datatype == "FP32" else tensor.contents.int64_contents
    if len(elements) != count:
        raise InvalidArgument(field, f"{len(elements)} elements for shape {list(shape)}, which holds {count}")
    if spec.datatype == "BYTES":
        array = np.empty(count, dtype=object)
        array[:] = elements
        return array.reshape(shape)
    return np.asarray(elements, dtype=NUMBERS[spec.datatype]).reshape(shape)


NUMBERS = {"INT64": np.dtype("<i8"), "FP32": np.dtype("<f4")}


def raw_numbers(raw: bytes, count: int, field: str, datatype: str) -> np.ndarray:
    size = NUMBERS[datatype].itemsize
    if len(raw) != count * size:
        raise InvalidArgument(field, f"raw contents of {len(raw)} bytes; {count} {datatype} elements take {count * size}")
    return np.frombuffer(raw, dtype=NUMBERS[datatype])


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
    names = card.output_widths
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


def infer_response(request: pb.ModelInferRequest, result: TensorResult, wanted: list[tuple[str, int]], raw: bool) -> pb.ModelInferResponse:
    """Outputs in the form the inputs came in: raw contents answer raw contents (what Triton's clients read)."""
    card = result.model.card
    response = pb.ModelInferResponse(model_name=card.name, model_version=card.version, id=request.id)
    if result.position is not None:
        response.parameters[POSITION].int64_param = result.position
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
