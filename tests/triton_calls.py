"""Calls made with Triton's own client library (tritonclient.grpc), unmodified, for test_triton_client.py.

They run in a process of their own: tritonclient registers Triton's .proto files (package `inference`) in
protobuf's default descriptor pool, where the server's own stubs for the same package already are, and
one process cannot hold both. Results come back as plain values and numpy arrays.
"""

from __future__ import annotations

import queue

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def server_facts(target: str, model: str) -> dict:
    with triton.InferenceServerClient(target) as client:
        metadata = client.get_model_metadata(model, as_json=True)
        config = client.get_model_config(model, as_json=True)["config"]
        return {
            "live": client.is_server_live(),
            "ready": client.is_server_ready(),
            "model_ready": client.is_model_ready(model),
            "extensions": client.get_server_metadata(as_json=True)["extensions"],
            "inputs": [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["inputs"]],
            "outputs": [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata["outputs"]],
            "max_batch_size": config["max_batch_size"],
            "idle_us": int(config["sequence_batching"]["max_sequence_idle_microseconds"]),
        }


def _tokens(chunk: list[int]) -> triton.InferInput:
    tensor = triton.InferInput("tokens", [1, len(chunk)], "INT64")
    tensor.set_data_from_numpy(np.array([chunk], np.int64))
    return tensor


def infer_sequence(
    target: str, model: str, chunks: list[list[int]], sequence_id: int | str, tls_ca: str = "", token: str = ""
) -> list[np.ndarray] | str:
    """One `infer` per chunk, the first with sequence_start and the last with sequence_end; over TLS (ssl=True,
    checked against `tls_ca`) and with the token as an `authorization` header when given. A refusal comes back as
    its status and message."""
    headers = {"authorization": f"Bearer {token}"} if token else None
    with triton.InferenceServerClient(target, ssl=bool(tls_ca), root_certificates=tls_ca or None) as client:  # a file
        try:
            return [
                client.infer(
                    model, [_tokens(chunk)], outputs=[triton.InferRequestedOutput("logits")], sequence_id=sequence_id,
                    sequence_start=index == 0, sequence_end=index == len(chunks) - 1, headers=headers,
                ).as_numpy("logits")
                for index, chunk in enumerate(chunks)
            ]
        except InferenceServerException as err:
            return f"{err.status()}: {err.message()}"


def infer_text(target: str, model: str, text: str) -> np.ndarray:
    """A whole text as a BYTES input, with no sequence."""
    tensor = triton.InferInput("text", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[text.encode()]], dtype=object))
    with triton.InferenceServerClient(target) as client:
        return client.infer(model, [tensor]).as_numpy("logits")


def stream_sequence(target: str, model: str, chunks: list[list[int]], sequence_id: int) -> list:
    """The whole sequence with start_stream + async_stream_infer, and one bad request after the first chunk:
    per request, in order, its logits or its error message."""
    answers: queue.Queue = queue.Queue()
    with triton.InferenceServerClient(target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        sent = []
        for index, chunk in enumerate(chunks):
            client.async_stream_infer(
                model, [_tokens(chunk)], request_id=f"chunk-{index}", sequence_id=sequence_id,
                sequence_start=index == 0, sequence_end=index == len(chunks) - 1,
            )
            sent.append(f"chunk-{index}")
            if index == 0:
                client.async_stream_infer(model, [_tokens([10**6])], request_id="bad", sequence_id=sequence_id)
                sent.append("bad")
        received = [answers.get(timeout=30) for _ in sent]
        client.stop_stream()
    by_id, errors = {}, []
    for result, error in received:
        if error is not None:
            errors.append(str(error))
        else:
            by_id[result.get_response().id] = result.as_numpy("logits")
    return [by_id[name] for name in sent if name != "bad"], errors


def repository_and_statistics(target: str, model: str) -> dict:
    """What Triton's tools read about a repository and a model's statistics, and a load and an unload refused."""
    with triton.InferenceServerClient(target) as client:
        index = client.get_model_repository_index(as_json=True)["models"]
        statistics = client.get_inference_statistics(model, as_json=True)["model_stats"]
        refusals = []
        for action in (client.load_model, client.unload_model):
            try:
                action(model)
            except InferenceServerException as err:
                refusals.append(f"{err.status()}: {err.message()}")
        return {"index": [(m["name"], m["version"], m["state"]) for m in index], "statistics": statistics, "refusals": refusals}


def stream_values(target: str, model: str, sequences: list[np.ndarray], per_request: int) -> list[np.ndarray]:
    """Many sequences of a model that takes values on one stream, their requests interleaved: each request FP32
    [1, per_request, *step] with Triton's sequence parameters; per sequence, its first output over all its steps."""
    answers: queue.Queue = queue.Queue()
    sent = 0
    with triton.InferenceServerClient(target) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        longest = max(len(steps) for steps in sequences)
        for start in range(0, longest, per_request):
            for number, steps in enumerate(sequences):
                if start >= len(steps):
                    continue
                piece = steps[start : start + per_request][None].astype(np.float32)
                tensor = triton.InferInput("input", list(piece.shape), "FP32")
                tensor.set_data_from_numpy(piece)
                client.async_stream_infer(
                    model, [tensor], request_id=f"{number}:{start}", sequence_id=1000 + number, sequence_start=start == 0,
                    sequence_end=start + per_request >= len(steps),
                )
                sent += 1
        received = [answers.get(timeout=60) for _ in range(sent)]
        client.stop_stream()
    outputs: dict[int, dict[int, np.ndarray]] = {}
    for result, error in received:
        if error is not None:
            raise AssertionError(str(error))
        number, start = map(int, result.get_response().id.split(":"))
        outputs.setdefault(number, {})[start] = result.as_numpy("output")[0, :, 0]
    return [np.concatenate([by_start[s] for s in sorted(by_start)]) for _, by_start in sorted(outputs.items())]
