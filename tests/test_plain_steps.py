"""The native front end's plain steps (server/native_front/plain_steps.py): ModelStreamInfer's common request read by
front.cc and answered from the engine's arrays must be answered exactly as the servicer answers it on --port —
message for message, values within the reference's tolerance, errors word for word — and every other request must
reach the servicer, in its sequence's order."""

from __future__ import annotations

import ctypes
import random
import threading
import time

import grpc
import numpy as np
import pytest
from google.protobuf.message import DecodeError

from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from rnnserve.server.api.kserve_tensors import stream_sequence
from tests.helpers import active_sessions_settled, logits_of, native_unavailable, reference_logits, request, scrape

pytestmark = pytest.mark.skipif(native_unavailable() is not None, reason=f"no native front end: {native_unavailable()}")

PLAIN = "rnnserve_native_plain_steps_total"


def _answers(target: str, requests: list[pb.ModelInferRequest]) -> list[pb.ModelStreamInferResponse]:
    """The stream's answers, all requests sent at once (as a client ahead of its answers sends them)."""
    with grpc.insecure_channel(target) as channel:
        return list(pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(iter(requests), timeout=60))


def _by_sequence(responses: list[pb.ModelStreamInferResponse]) -> dict[str, list[pb.ModelStreamInferResponse]]:
    """Each request id's sequence (the part before ':') → its answers, in the order they came."""
    out: dict[str, list] = {}
    for response in responses:
        out.setdefault(response.infer_response.id.split(":")[0], []).append(response)
    return out


def _sequences(first_id: int) -> list[list[pb.ModelInferRequest]]:
    """Sequences in every form a plain step takes: raw or int64_contents, one token or several, an output named or
    none, int64, uint64 and string ids, with and without a request id, with a parameter the servicer ignores."""
    chunks = [[72], [101, 108], [108, 111, 32], [119]]

    def steps(sequence, name: str, **form) -> list[pb.ModelInferRequest]:
        out = []
        for k, chunk in enumerate(chunks):
            message = request(tokens=chunk, sequence=sequence, start=k == 0, end=k == len(chunks) - 1, id=f"{name}:{k}", **form)
            out.append(message)
        return out

    uint = steps(first_id + 1, "uint")
    for message in uint:
        message.parameters["sequence_id"].uint64_param = first_id + 1
    ignored = steps(first_id + 3, "ignored")
    for message in ignored:
        message.parameters["triton_enable_empty_final_response"].bool_param = True
    no_id = steps(first_id + 4, "")
    for message in no_id:
        message.id = ""
    return [steps(first_id, "raw"), steps(f"text-{first_id}", "contents", raw=False, outputs=[("logits", 0)]), uint, ignored, no_id]


def test_plain_steps_are_answered_as_the_servicer_answers_them_on_port(make_server, reference):
    """The same sequences on --port and on --native-port (each on one stream, interleaved, sent at once): the same
    answers, message for message; their logits equal the in-process reference; every one went the plain way."""
    running = make_server(native_port=0, metrics_port=0, max_sessions=16)
    expected = reference_logits(reference, "lstm", [[72], [101, 108], [108, 111, 32], [119]])
    answers = {}
    for name, target, first in (("port", running.target, 100), ("native", running.native_target, 100)):
        sequences = _sequences(first)
        interleaved = [message for step in zip(*sequences) for message in step]
        answers[name] = _by_sequence(_answers(target, interleaved))
    assert answers["native"].keys() == answers["port"].keys() and len(answers["native"]) == 5
    for sequence, responses in answers["native"].items():
        assert responses == answers["port"][sequence], sequence
        assert [r.infer_response.parameters["sequence_position"].int64_param for r in responses] == [1, 3, 6, 7]
        for response, logits in zip(responses, expected):
            assert not response.error_message
            np.testing.assert_allclose(logits_of(response.infer_response)[0], logits, atol=1e-5)
    assert scrape(running, PLAIN, model="lstm") == 20
    assert active_sessions_settled(running.client(), "lstm") == 0


def test_more_rows_than_max_batch_run_in_parts_and_each_gets_its_own(make_server, reference):
    """12 sequences' steps taken at once by a server of --max-batch 2: the engine runs them in parts, and each
    sequence's answers still equal the reference."""
    running = make_server(native_port=0, max_batch=2, max_sessions=16)
    chunks = {s: [[(11 * s + k) % 256] for k in range(5)] for s in range(12)}
    requests = [request(tokens=chunks[s][k], sequence=500 + s, start=k == 0, end=k == 4, id=f"{s}:{k}") for k in range(5) for s in range(12)]
    answers = _by_sequence(_answers(running.native_target, requests))
    for s in range(12):
        got = [logits_of(r.infer_response)[0] for r in answers[str(s)]]
        np.testing.assert_allclose(np.array(got), np.array(reference_logits(reference, "lstm", chunks[s])), atol=1e-5)


def test_requests_it_leaves_to_the_servicer_are_answered_as_on_port(make_server):
    """Requests that are not plain steps (a classification, sequence_position, text, a sequence id over 1 KB), or that
    the plain path hands back (no such model or output, a model that keeps no sequences, a token outside the
    vocabulary, too many tokens) or refuses (a sequence never started), get the same answers on both ports, errors
    word for word."""
    running = make_server(native_port=0, metrics_port=0, max_input_tokens=4)
    started = [request(tokens=[65], sequence=700, start=True, id="start")]
    cases = [
        request(tokens=[66], sequence=700, outputs=[("logits", 3)], id="classification"),
        request(tokens=[67], sequence=700, position=2, id="position"),
        request(text="Hi", sequence=700, id="text"),
        request(tokens=[10**6], sequence=700, id="outside the vocabulary"),
        request(tokens=[1, 2, 3, 4, 5], sequence=700, id="over --max-input-tokens"),
        request(model="nope", tokens=[68], sequence=700, id="no such model"),
        request(tokens=[69], sequence=700, outputs=[("attention", 0)], id="no such output"),
        request(model="tagger_bi", tokens=[70], sequence=701, start=True, id="keeps no sequences"),
        request(tokens=[71], sequence=702, id="never started"),
        request(tokens=[73], sequence="x" * 2000, start=True, end=True, id="a long sequence id"),
        request(tokens=[72], sequence=700, end=True, id="end"),
    ]
    port = _answers(running.target, started + cases)
    native = _answers(running.native_target, started + cases)
    assert {r.infer_response.id: r for r in native} == {r.infer_response.id: r for r in port}  # other sequences: any order
    errors = {r.infer_response.id: r.error_message for r in native if r.error_message}
    assert set(errors) == {"outside the vocabulary", "over --max-input-tokens", "no such model", "no such output", "keeps no sequences", "never started"}
    assert "was never started" in errors["never started"]
    positions = {r.infer_response.id: r.infer_response.parameters["sequence_position"].int64_param for r in native if not r.error_message}
    assert positions == {"start": 1, "classification": 2, "position": 3, "text": 5, "a long sequence id": 1, "end": 6}
    assert scrape(running, PLAIN, model="lstm") == 2  # start and end; the rest went to the servicer, or were refused


def test_a_sequences_requests_keep_their_order_whichever_way_they_go(server, reference):
    """Two sequences on one stream, their plain steps and classifications (answered by the servicer) alternating,
    all sent at once: each sequence's answers come in its order, each from the state its earlier requests left."""
    chunks = {s: [[(5 * k + 3 * s) % 256] for k in range(10)] for s in range(2)}
    requests = [
        request(tokens=chunks[s][k], sequence=800 + s, start=k == 0, end=k == 9, id=f"{s}:{k}", outputs=[("logits", 2)] if k % 2 else ())
        for k in range(10) for s in range(2)
    ]
    answers = _by_sequence(_answers(server.native_target, requests))
    for s in range(2):
        expected = reference_logits(reference, "lstm", chunks[s])
        responses = answers[str(s)]
        assert [r.infer_response.id for r in responses] == [f"{s}:{k}" for k in range(10)]
        assert [r.infer_response.parameters["sequence_position"].int64_param for r in responses] == list(range(1, 11))
        for k, (response, logits) in enumerate(zip(responses, expected)):
            if k % 2:  # the classification's best entry, its length and "value:index:label"
                raw = response.infer_response.raw_output_contents[0]
                best = raw[4 : 4 + int.from_bytes(raw[:4], "little")].decode().split(":")
                assert int(best[1]) == int(np.argmax(logits[0])) and float(best[0]) == pytest.approx(float(logits[0].max()), abs=1e-4)
            else:
                np.testing.assert_allclose(logits_of(response.infer_response)[0], logits, atol=1e-5)


def test_a_cancelled_stream_ends_its_sequences_and_leaves_another_exact(server, reference):
    """One stream with 4 sequences far ahead of its answers is cancelled while its steps are in the engine; another
    stream's sequence, meanwhile, gets exactly the reference's answers, and the cancelled stream's sequences end."""
    chunks = [[(3 * k) % 256] for k in range(60)]
    expected = reference_logits(reference, "lstm", chunks)
    with grpc.insecure_channel(server.native_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        cancelled = stub.ModelStreamInfer(iter([request(tokens=[k % 256], sequence=900 + s, start=k == 0, id=f"{s}:{k}")
                                                for k in range(200) for s in range(4)]), timeout=60)
        next(cancelled)
        other = threading.Thread(target=lambda: results.extend(_answers(server.native_target, [
            request(tokens=chunk, sequence=950, start=k == 0, end=k == 59, id=f"o:{k}") for k, chunk in enumerate(chunks)])))
        results: list = []
        other.start()
        cancelled.cancel()
        other.join(60)
    np.testing.assert_allclose(np.array([logits_of(r.infer_response)[0] for r in results]), np.array(expected), atol=1e-5)
    assert active_sessions_settled(server.client(), "lstm") == 0
    gone = _answers(server.native_target, [request(tokens=[1], sequence=900, id="after")])
    assert "ModelStreamInfer stream that started it closed" in gone[0].error_message


def test_plain_steps_are_answered_while_the_engine_is_generating(server, reference):
    """While a long generation keeps the engine in onnxruntime call after call, plain steps (held in front.cc while a
    call runs) are still taken between calls and answered, exactly."""
    chunks = [[(7 * k) % 256] for k in range(40)]
    expected = reference_logits(reference, "lstm", chunks)
    with server.client() as client:
        first_piece = threading.Event()

        def generate() -> None:
            for _ in client.generate("lstm", "The", max_tokens=4000, temperature=0.0):
                first_piece.set()

        generating = threading.Thread(target=generate)
        generating.start()
        assert first_piece.wait(30)  # the engine is generating
        began = time.monotonic()
        responses = _answers(server.native_target, [request(tokens=c, sequence=990, start=k == 0, end=k == 39, id=str(k)) for k, c in enumerate(chunks)])
        took = time.monotonic() - began
        generating.join(120)
    np.testing.assert_allclose(np.array([logits_of(r.infer_response)[0] for r in responses]), np.array(expected), atol=1e-5)
    assert took < 30


# front.cc's reading of a request, against protobuf's


def _read(lib, data: bytes) -> tuple[bool, bytes, list[bytes], np.ndarray]:
    from rnnserve.server.native_front.plain_steps import STEP_RECORD

    record = np.zeros(1, STEP_RECORD)
    key, fields = ctypes.create_string_buffer(4096), ctypes.create_string_buffer(4096)
    key_size, fields_size = ctypes.c_size_t(4096), ctypes.c_size_t(4096)
    plain = lib.rf_read_request(data, len(data), record.ctypes.data, key, ctypes.byref(key_size), fields, ctypes.byref(fields_size))
    return bool(plain), key.raw[: key_size.value], fields.raw[: fields_size.value].split(b"\0")[:-1], record[0]


def _random_request(rng: random.Random) -> pb.ModelInferRequest:
    """A request near the plain form, varied field by field."""
    steps = rng.choice([1, 1, 2, 16, 17])
    message = request(
        model=rng.choice(["lstm", "m", "", "é"]), tokens=[rng.randrange(-3, 300) for _ in range(steps)], raw=rng.random() < 0.6,
        sequence=rng.choice([0, 5, -7, 2**40, "s", "", "ü-1"]), start=rng.random() < 0.3, end=rng.random() < 0.3,
        id=rng.choice(["", "a", "x" * 40]), outputs=rng.choice([(), (("logits", 0),), (("logits", 2),), (("logits", 0), ("other", 0))]),
    )
    message.model_version = rng.choice(["", "", "1"])
    if rng.random() < 0.2:
        message.parameters[rng.choice(["priority", "sequence_position", "sequence_start"])].int64_param = 1
    if rng.random() < 0.1:
        message.parameters["sequence_id"].uint64_param = rng.choice([0, 9, 2**63 + 5])
    if rng.random() < 0.1:
        message.inputs[0].shape[:] = rng.choice([[1], [2, 1], [1, steps, 1], [1, steps + 1]])
    if rng.random() < 0.1:
        message.inputs[0].datatype = "INT32"
    if rng.random() < 0.05:
        message.inputs.add(name="text", datatype="BYTES", shape=[1, 1])
    return message


def _mutated(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        kind = rng.random()
        if kind < 0.4 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind < 0.7 and data:
            at = rng.randrange(len(data))
            del data[at : at + rng.randrange(1, 8)]
        else:
            at = rng.randrange(len(data) + 1)
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 6)))
    return bytes(data)


def test_its_reading_of_a_request_agrees_with_protobuf():
    """For thousands of requests near the plain form, and mutations of their bytes: what front.cc calls plain parses
    as protobuf to exactly those fields and is a plain step by the servicer's own reading; and every request protobuf
    parses gets the order key the servicer's stream_sequence gives it."""
    from rnnserve.server.native_front.build import library

    lib, rng = library(), random.Random(21)
    plain_seen = 0
    for index in range(6000):
        data = _random_request(rng).SerializeToString(deterministic=True)  # map entries in key order: the same bytes every run
        if index % 2:
            data = _mutated(rng, data)
        plain, key, fields, record = _read(lib, data)
        try:
            message = pb.ModelInferRequest.FromString(data)
        except DecodeError:
            assert not plain, data
            continue
        ordered = stream_sequence(message)
        assert key == (b"" if ordered is None else "\0".join(ordered).encode()), data
        if not plain:
            continue
        plain_seen += 1
        (tensor,), raw = message.inputs, list(message.raw_input_contents)
        tokens = np.frombuffer(raw[0], "<i8") if raw else np.array(tensor.contents.int64_contents)
        assert (tensor.name, tensor.datatype, list(tensor.shape)) == ("tokens", "INT64", [1, len(tokens)])
        assert 1 <= len(tokens) <= 16 and list(record["tokens"][: record["steps"]]) == tokens.tolist()
        parameters = message.parameters
        assert "sequence_position" not in parameters and ordered is not None
        assert bool(record["start"]) == parameters["sequence_start"].bool_param if "sequence_start" in parameters else not record["start"]
        assert bool(record["end"]) == parameters["sequence_end"].bool_param if "sequence_end" in parameters else not record["end"]
        for name in ("sequence_start", "sequence_end"):
            assert name not in parameters or parameters[name].WhichOneof("parameter_choice") == "bool_param"
        output = "=" + message.outputs[0].name if message.outputs else ""
        assert not message.outputs or not message.outputs[0].parameters
        assert fields == [message.model_name.encode(), message.model_version.encode(), message.id.encode(), output.encode(),
                          b"raw" if raw else b"contents"]
    assert plain_seen > 300
