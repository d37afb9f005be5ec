"""KServe v2 REST inference bodies ⇄ the gRPC protocol's messages: a JSON request (with the binary-tensor extension:
`Inference-Header-Content-Length` bytes of JSON, then each input's bytes, its size in its `binary_data_size`
parameter) becomes the ModelInferRequest the gRPC method takes, with every input as raw bytes; its answer goes back
as JSON, an output's data as a flat list, or as bytes after the JSON where it is asked for binary (its
`binary_data` parameter, or the request's `binary_data_output`)."""

from __future__ import annotations

import json

import numpy as np

from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.server.errors import InvalidArgument

HEADER_LENGTH = "Inference-Header-Content-Length"
DTYPES = {"BOOL": "?", "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "UINT16": "<u2",
          "UINT32": "<u4", "UINT64": "<u8", "FP32": "<f4", "FP64": "<f8"}
BINARY = ("binary_data", "binary_data_size", "binary_data_output")  # the extension's own parameters, not the model's


def infer_request(name: str, version: str, body: bytes, header_length: str | None) -> tuple[pb.ModelInferRequest, dict]:
    """The gRPC request for a REST body, and the JSON header it came with (its output choices are read again for
    the answer). A body that is not the protocol's is INVALID_ARGUMENT naming what is wrong."""
    try:
        size = len(body) if header_length is None else int(header_length)
    except ValueError:
        raise InvalidArgument(HEADER_LENGTH, f"{header_length!r} is not a number of bytes") from None
    if not 0 <= size <= len(body):
        raise InvalidArgument(HEADER_LENGTH, f"{size} bytes of JSON, but the body has {len(body)}")
    try:
        header = json.loads(body[:size])
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument("body", f"not JSON: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise InvalidArgument("inputs", "the body must be a JSON object with a list of inputs")
    request = pb.ModelInferRequest(model_name=name, model_version=version, id=str(header.get("id", "")))
    _parameters(request.parameters, header.get("parameters", {}), "parameters")
    binary, offset = body[size:], 0
    for index, entry in enumerate(header["inputs"]):
        field = f"inputs[{index}]"
        if not isinstance(entry, dict) or not {"name", "datatype", "shape"} <= set(entry):
            raise InvalidArgument(field, "an input is an object with a name, a datatype and a shape")
        tensor = request.inputs.add(name=str(entry["name"]), datatype=str(entry["datatype"]))
        try:
            tensor.shape.extend(int(d) for d in entry["shape"])
        except (TypeError, ValueError):
            raise InvalidArgument(f"{field}.shape", f"{entry['shape']!r} is not a list of integers") from None
        parameters = entry.get("parameters", {})
        _parameters(tensor.parameters, parameters, f"{field}.parameters")
        if isinstance(parameters, dict) and "binary_data_size" in parameters:
            length = parameters["binary_data_size"]
            if not isinstance(length, int) or length < 0 or offset + length > len(binary):
                raise InvalidArgument(f"{field}.parameters.binary_data_size", f"{length!r}: the body holds {len(binary) - offset} more bytes")
            request.raw_input_contents.append(binary[offset : offset + length])
            offset += length
        elif "data" in entry:
            request.raw_input_contents.append(_raw(tensor.datatype, entry["data"], f"{field}.data"))
        else:
            raise InvalidArgument(field, "has neither data nor a binary_data_size")
    if offset != len(binary):
        raise InvalidArgument("body", f"{len(binary) - offset} bytes after the inputs' binary data that no input names")
    for index, entry in enumerate(header.get("outputs", [])):
        if not isinstance(entry, dict) or "name" not in entry:
            raise InvalidArgument(f"outputs[{index}]", "a requested output is an object with a name")
        output = request.outputs.add(name=str(entry["name"]))
        _parameters(output.parameters, entry.get("parameters", {}), f"outputs[{index}].parameters")
    return request, header


def infer_body(response: pb.ModelInferResponse, header: dict) -> tuple[bytes, dict[str, str]]:
    """The REST answer's body and headers: JSON, then the outputs asked for in binary, in order."""
    binary_by_default = bool(header.get("parameters", {}).get("binary_data_output", False))
    binary_asked = {
        entry["name"]: bool(entry.get("parameters", {}).get("binary_data", binary_by_default)) for entry in header.get("outputs", [])
    }
    outputs, tail = [], []
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if binary_asked.get(tensor.name, binary_by_default):
            entry["parameters"] = {"binary_data_size": len(raw)}
            tail.append(raw)
        else:
            entry["data"] = _listed(tensor.datatype, raw)
        outputs.append(entry)
    document = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        document["id"] = response.id
    if response.parameters:
        document["parameters"] = {k: getattr(v, v.WhichOneof("parameter_choice")) for k, v in response.parameters.items()}
    text = json.dumps(document).encode()
    if not tail:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(tail), {"Content-Type": "application/octet-stream", HEADER_LENGTH: str(len(text))}


def _parameters(into, given, field: str) -> None:
    """JSON parameters as the protocol's typed ones (the binary extension's own are left out)."""
    if not isinstance(given, dict):
        raise InvalidArgument(field, "parameters are a JSON object")
    for key, value in given.items():
        if key in BINARY:
            continue
        if isinstance(value, bool):
            into[key].bool_param = value
        elif isinstance(value, int):
            into[key].int64_param = value
        elif isinstance(value, str):
            into[key].string_param = value
        elif isinstance(value, float):
            into[key].double_param = value
        else:
            raise InvalidArgument(f"{field}.{key}", f"{value!r}: a parameter is a boolean, an integer, a number or a string")


def _raw(datatype: str, data, field: str) -> bytes:
    """JSON data (flat or nested, row-major) as the protocol's raw bytes: BYTES as 4-byte lengths and UTF-8."""
    if datatype == "BYTES":
        items = np.asarray(data, dtype=object).ravel().tolist()
        if not all(isinstance(i, str) for i in items):
            raise InvalidArgument(field, "BYTES data is a list of strings")
        return b"".join(len(b).to_bytes(4, "little") + b for b in (i.encode() for i in items))
    if datatype not in DTYPES:
        raise InvalidArgument(field, f"datatype {datatype!r}: expected one of BYTES, {', '.join(DTYPES)}")
    try:
        return np.asarray(data, dtype=DTYPES[datatype]).ravel().tobytes()
    except (TypeError, ValueError, OverflowError):
        raise InvalidArgument(field, f"not a list of {datatype} numbers") from None


def _listed(datatype: str, raw: bytes) -> list:
    if datatype == "BYTES":
        items, offset = [], 0
        while offset < len(raw):
            length = int.from_bytes(raw[offset : offset + 4], "little")
            items.append(raw[offset + 4 : offset + 4 + length].decode("utf-8", errors="replace"))
            offset += 4 + length
        return items
    return np.frombuffer(raw, DTYPES[datatype]).tolist()
