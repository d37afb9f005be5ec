"""The KServe v2 service (inference.GRPCInferenceService) over real gRPC: metadata, tensors in both forms,
Triton's sequences (start, continue, end, expiry, restart, stream ownership), precise errors."""

import struct
import threading

import grpc
import numpy as np
import pytest

from rnnserve.inference import grpc_service_pb2 as pb
from rnnserve.inference import grpc_service_pb2_grpc as pb_grpc
from rnnserve.inference import model_config_pb2 as config_pb
from tests.helpers import logits_of, reference_logits, request, scrape, scrape_settled, status_of

INVALID, NOT_FOUND, FAILED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION


@pytest.fixture
def kserve(any_target):
    """Every test here runs against --port and against --native-port (the native front end)."""
    with grpc.insecure_channel(any_target) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def test_server_and_model_metadata(kserve, repository):
    assert kserve.ServerLive(pb.ServerLiveRequest()).live
    assert kserve.ServerReady(pb.ServerReadyRequest()).ready
    meta = kserve.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "rnnserve" and "sequence" in meta.extensions
    assert kserve.ModelReady(pb.ModelReadyRequest(name="lstm")).ready
    assert not kserve.ModelReady(pb.ModelReadyRequest(name="nope")).ready
    model = kserve.ModelMetadata(pb.ModelMetadataRequest(name="lstm"))
    assert (model.name, list(model.versions), model.platform) == ("lstm", ["1"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in model.inputs] == [("tokens", "INT64", [-1, -1])]  # text: accepted, not declared
    assert [(t.name, t.datatype, list(t.shape)) for t in model.outputs] == [("logits", "FP32", [-1, -1, 256])]
    error = status_of(lambda: kserve.ModelMetadata(pb.ModelMetadataRequest(name="nope")))
    assert error.code() == NOT_FOUND and "'nope' not found" in error.details()


def test_model_config_describes_batching_and_implicit_state(kserve):
    config = kserve.ModelConfig(pb.ModelConfigRequest(name="lstm")).config
    assert config.max_batch_size == 64 and config.platform == "onnxruntime_onnx"
    assert [(i.name, i.data_type, list(i.dims), i.optional) for i in config.input] == [
        ("tokens", config_pb.TYPE_INT64, [-1], False)
    ]
    assert config.sequence_batching.max_sequence_idle_microseconds == 300_000_000
    assert [(s.input_name, list(s.dims)) for s in config.sequence_batching.state] == [("h", [2, 32]), ("c", [2, 32])]
    whole = kserve.ModelConfig(pb.ModelConfigRequest(name="tagger_bi")).config
    assert not whole.HasField("sequence_batching")  # it keeps no sequences


@pytest.mark.parametrize("raw", [True, False])
def test_model_infer_without_a_sequence_equals_the_reference(kserve, reference, raw):
    rows = [list(b"def f(x):"), list(b"import os"), list(b"the help ")]
    response = kserve.ModelInfer(request(tokens=rows, raw=raw, id="r1"))
    assert response.id == "r1" and response.model_version == "1"
    assert bool(response.raw_output_contents) == raw  # answered in the form it was asked in
    logits = logits_of(response)
    assert logits.shape == (3, 9, 256)
    for row, tokens in enumerate(rows):
        assert np.abs(logits[row] - reference_logits(reference, "lstm", [tokens])[0]).max() < 1e-5
    by_text = logits_of(kserve.ModelInfer(request(text=["def f(x):", "import os", "the help "], raw=raw)))
    assert np.abs(by_text - logits).max() < 1e-6


def test_a_sequence_continues_its_state_across_requests(kserve, reference):
    chunks = [list(b"The first "), list(b"and "), list(b"the last.")]
    expected = reference_logits(reference, "lstm", chunks)
    position = 0
    for index, chunk in enumerate(chunks):
        # the client may say where it is (rnnserve's sequence_position); every answer says where the sequence is
        message = request(tokens=chunk, sequence=1001, start=index == 0, end=index == len(chunks) - 1, position=position if index else None)
        response = kserve.ModelInfer(message)
        assert np.abs(logits_of(response)[0] - expected[index]).max() < 1e-5
        position += len(chunk)
        assert response.parameters["sequence_position"].int64_param == position
    assert "sequence_position" not in kserve.ModelInfer(request(tokens=[65])).parameters  # no sequence, no position
    error = status_of(lambda: kserve.ModelInfer(request(tokens=[65], sequence=1001)))
    assert error.code() == NOT_FOUND and "sequence 1001 of model 'lstm' has ended" in error.details()
    error = status_of(lambda: kserve.ModelInfer(request(tokens=[65], sequence="never-started")))
    assert error.code() == NOT_FOUND and "was never started: start it with sequence_start" in error.details()


def test_string_ids_and_sequence_start_on_a_live_sequence_starts_afresh(kserve, reference):
    fresh = reference_logits(reference, "lstm", [list(b"abc")])[0]
    kserve.ModelInfer(request(tokens=list(b"some context"), sequence="user-7", start=True))
    again = logits_of(kserve.ModelInfer(request(tokens=list(b"abc"), sequence="user-7", start=True)))[0]
    assert np.abs(again - fresh).max() < 1e-5  # the old state is gone, not continued
    kserve.ModelInfer(request(tokens=[], sequence="user-7", end=True))  # an empty request may just end it


def test_idle_sequences_expire_and_say_so(make_server):
    running = make_server(session_ttl_s=0.2, metrics_port=0)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stub.ModelInfer(request(tokens=[72], sequence=5, start=True))
        assert scrape_settled(running, "rnnserve_sessions_expired_total", 1, model="lstm", kind="sequence") == 1  # its timer fired
        error = status_of(lambda: stub.ModelInfer(request(tokens=[72], sequence=5)))
    assert error.code() == NOT_FOUND
    assert "sequence 5 of model 'lstm' expired: it was idle longer than 0.2 s" in error.details()
    assert scrape(running, "rnnserve_sessions_expired_total", model="lstm", kind="sequence") == 1
    assert scrape_settled(running, "rnnserve_slots_in_use", 0, model="lstm") == 0


def _int32_tokens():
    message = request(tokens=[1, 2])
    message.inputs[0].datatype = "INT32"
    return message


def _short_raw():
    message = request(tokens=[1, 2])
    message.raw_input_contents[0] = message.raw_input_contents[0][:12]
    return message


def _miscounted():
    message = request(tokens=[1, 2], raw=False)
    message.inputs[0].shape[:] = [1, 3]
    return message


def _sequence_id_as_float():
    message = request(tokens=[1], sequence=77)
    message.parameters["sequence_id"].double_param = 77.0
    return message


def _unknown_input():
    message = request(tokens=[1])
    message.inputs[0].name = "input_ids"
    return message


def _position_as(kind: str, value, **fields):
    message = request(tokens=[1], **fields)
    setattr(message.parameters["sequence_position"], kind, value)
    return message


def _end_without_id():
    message = request(tokens=[1])
    message.parameters["sequence_end"].bool_param = True
    return message


BAD_REQUESTS = [  # (what is wrong, the request, its status, words its message must hold)
    ("int32 tokens", _int32_tokens, INVALID, "inputs[tokens]: datatype INT32: this input is tokens (INT64 [-1, -1])"),
    ("short raw contents", _short_raw, INVALID, "inputs[tokens]: raw contents of 12 bytes; 2 INT64 elements take 16"),
    ("shape and contents disagree", _miscounted, INVALID, "inputs[tokens]: 2 elements for shape [1, 3], which holds 3"),
    ("no input", lambda: pb.ModelInferRequest(model_name="lstm"), INVALID, "send exactly one of the inputs"),
    ("unknown input", _unknown_input, INVALID, "inputs[input_ids]: model 'lstm' has no such input; it takes tokens (INT64 [-1, -1]) or text"),
    ("token outside the vocabulary", lambda: request(tokens=[1, 999]), INVALID, "tokens[1]: 999 is outside the vocabulary [0, 256)"),
    ("two rows in a sequence", lambda: request(tokens=[[1], [2]], sequence=77), INVALID, "a sequence's request carries one row (batch size 1), not 2"),
    ("float sequence id", _sequence_id_as_float, INVALID, "parameters[sequence_id]: must be an int64_param or a string_param, not double_param"),
    ("end without an id", _end_without_id, INVALID, "parameters[sequence_end]: needs a sequence_id"),
    ("float position", lambda: _position_as("double_param", 18.0, sequence=77), INVALID, "parameters[sequence_position]: must be an int64_param"),
    ("negative position", lambda: _position_as("int64_param", -1, sequence=77), INVALID, "parameters[sequence_position]: must be an int64_param of at least 0"),
    ("position without a sequence", lambda: request(tokens=[1], position=0), INVALID, "parameters[sequence_position]: needs a sequence_id"),
    ("a start that is not at 0", lambda: request(tokens=[1], sequence=78, start=True, position=5), INVALID, "is 5 on a request that starts the sequence"),
    # a client whose answers ran ahead of the sequence's state (restored from a store that was behind): refused, left as it is
    ("the sequence is behind the client", lambda: request(tokens=[1], sequence=77, end=True, position=25), FAILED,
     "sequence 77 of model 'lstm' is at position 18, not 25: it lacks requests this client had answered (did their server stop before the state store had them?): send its requests from position 18 again"),
    ("the sequence is ahead of the client", lambda: request(tokens=[1], sequence=77, position=3), FAILED,
     "is at position 18, not 3: it has consumed requests whose answers did not reach this client"),
    ("unknown output", lambda: request(tokens=[1], outputs=[("probs", 0)]), INVALID, "outputs[probs]: model 'lstm' has no such output; its outputs: logits"),
    ("classification too wide", lambda: request(tokens=[1], outputs=[("logits", 999)]), INVALID, "outputs[logits].parameters[classification]: 999 is not in [1, 256]"),
    ("sequence on a whole-input model", lambda: request("tagger_bi", text="a b", sequence=3, start=True), FAILED, "needs the whole input at once, so it keeps no sequences"),
    ("missing source", lambda: request("dates", tokens=[1]), INVALID, "source: model 'dates' starts each sequence from a source: send one per row"),
    ("unknown label", lambda: request("writer", tokens=[1], starts=("label", "poetry")), INVALID, "'poetry' is not one of the kinds of text model 'writer' writes"),
    ("label for a model without one", lambda: request(tokens=[1], sequence=77, starts=("label", "c")), INVALID, "inputs[label]: model 'lstm' has no such input"),
    ("unknown model", lambda: request("nope", tokens=[1]), NOT_FOUND, "model 'nope' not found"),
]


@pytest.mark.parametrize("make_request, code, words", [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS])
def test_a_bad_request_gets_a_precise_error_and_leaves_a_live_sequence_alone(kserve, reference, make_request, code, words):
    chunks = [list(b"Before the error, "), list(b"after it.")]
    expected = reference_logits(reference, "lstm", chunks)
    kserve.ModelInfer(request(tokens=chunks[0], sequence=77, start=True))
    error = status_of(lambda: kserve.ModelInfer(make_request()))
    assert error.code() == code and words in error.details(), error.details()
    after = logits_of(kserve.ModelInfer(request(tokens=chunks[1], sequence=77, end=True)))[0]
    assert np.abs(after - expected[1]).max() < 1e-5


def test_whole_sequence_models_answer_model_infer(kserve, server, repository):
    import onnxruntime as ort

    session = ort.InferenceSession(str(repository / "tagger_bi" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    text = "wordsrunonwithoutspaces"
    tokens = server.app.repository.get("tagger_bi").tokenizer.encode(text)
    expected = session.run(None, {"tokens": np.array([tokens], np.int64)})[0]
    assert np.abs(logits_of(kserve.ModelInfer(request("tagger_bi", text=text))) - expected).max() < 1e-5


def test_classification_names_the_top_k_outputs(kserve, reference):
    tokens = list(b"x = 1")
    response = kserve.ModelInfer(request(tokens=tokens, outputs=[("logits", 3)]))
    output = response.outputs[0]
    assert (output.name, output.datatype, list(output.shape)) == ("logits", "BYTES", [1, 5, 3])
    raw, elements, offset = response.raw_output_contents[0], [], 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + length].decode())
        offset += 4 + length
    logits = reference_logits(reference, "lstm", [tokens])[0]
    top = np.argsort(-logits, axis=-1)[:, :3].ravel()
    assert [int(e.split(":")[1]) for e in elements] == top.tolist()
    assert abs(float(elements[0].split(":")[0]) - logits[0, top[0]]) < 1e-4
    assert elements[0].split(":", 2)[2] == chr(top[0])


@pytest.mark.parametrize("model, start", [("dates", ("source", "Tuesday, March 5th, 2024")), ("writer", ("label", "python"))])
def test_models_with_an_encoder_decode_over_kserve_as_generate_does(kserve, client, model, start):
    """A sequence starts from its label or source; the client feeds <bos>, then each greedy token back."""
    config = kserve.ModelConfig(pb.ModelConfigRequest(name=model)).config
    bos, eos = (int(config.parameters[name].string_value) for name in ("bos_token", "eos_token"))
    written, token = [], bos
    for step in range(30):
        response = kserve.ModelInfer(request(model, tokens=[token], sequence=f"{model}-1", start=step == 0, starts=start if step == 0 else None))
        if model == "dates":
            attention = response.outputs[1]
            assert (attention.name, list(attention.shape)) == ("attention", [1, 1, 48])
            assert abs(np.frombuffer(response.raw_output_contents[1], "<f4").sum() - 1) < 1e-4
        logits = logits_of(response)[0, -1].copy()
        logits[bos] = -np.inf
        token = int(np.argmax(logits))
        if token == eos:
            break
        written.append(token)
    kserve.ModelInfer(request(model, tokens=[], sequence=f"{model}-1", end=True))
    native = client.generate(model, **{start[0]: start[1]}, temperature=0, max_tokens=30)
    assert written == [t for piece in native for t in piece.token_ids]
    error = status_of(lambda: kserve.ModelInfer(request(model, tokens=[token], sequence=f"{model}-1", starts=start)))
    assert error.code() == INVALID  # read only at the start
    assert f"{start[0]}: is read only when a sequence starts" in error.details()


def stream_messages(stub, messages):
    """Sends `messages` on one ModelStreamInfer stream, closes it, and returns every response."""
    return list(stub.ModelStreamInfer(iter(messages)))


def test_stream_runs_each_sequence_in_order_and_errors_do_not_end_it(kserve, reference):
    a = [list(b"alpha one "), list(b"alpha two")]
    b = [list(b"beta one "), list(b"beta two")]
    messages = [
        request(tokens=a[0], sequence=201, start=True, id="a0"),
        request(tokens=b[0], sequence=202, start=True, id="b0"),
        request(tokens=[1, 999], sequence=201, id="bad"),  # an error in the middle of sequence 201
        request(tokens=a[1], sequence=201, end=True, id="a1"),
        request(tokens=b[1], sequence=202, end=True, id="b1"),
    ]
    responses = {r.infer_response.id: r for r in stream_messages(kserve, messages)}
    assert set(responses) == {"a0", "b0", "bad", "a1", "b1"}
    assert "999 is outside the vocabulary" in responses["bad"].error_message
    for name, chunks in (("a", a), ("b", b)):
        expected = reference_logits(reference, "lstm", chunks)
        for index in range(2):
            response = responses[f"{name}{index}"]
            assert response.error_message == ""
            assert np.abs(logits_of(response.infer_response)[0] - expected[index]).max() < 1e-5


def test_steps_batched_across_a_stream_keep_each_sequence_in_order_and_counted(kserve, reference):
    """Six sequences on one stream, their requests interleaved; each sequence's requests alternate between the
    steps answered in batches (token ids, a few at a time) and those answered one by one (text, and an input longer
    than a batched step's), so both must keep one sequence's order and state, and count every request."""
    def successes() -> int:
        stats = kserve.ModelStatistics(pb.ModelStatisticsRequest(name="lstm", version="1")).model_stats[0]
        return stats.inference_stats.success.count

    def chunks_of(s: int) -> list[list[int]]:  # each sequence's own, so that a state answered to another shows
        return [list(b"a%d" % s), list(b"text %d" % s), list(b"a longer input, %d of them" % s), list(b"!%d" % s)]

    kinds = ["tokens", "text", "tokens", "tokens"]
    sequences = range(301, 307)
    messages = []
    for index, kind in enumerate(kinds):
        for s in sequences:
            chunk = chunks_of(s)[index]
            given = {"text": bytes(chunk).decode()} if kind == "text" else {"tokens": chunk}
            messages.append(request(**given, sequence=s, start=index == 0, end=index == len(kinds) - 1, id=f"{s}-{index}"))
    before = successes()
    responses = {r.infer_response.id: r for r in stream_messages(kserve, messages)}
    assert [r.error_message for r in responses.values()] == [""] * len(messages)
    for s in sequences:
        chunks = chunks_of(s)
        expected = reference_logits(reference, "lstm", chunks)
        for index in range(len(chunks)):
            response = responses[f"{s}-{index}"].infer_response
            assert response.parameters["sequence_position"].int64_param == sum(map(len, chunks[: index + 1]))
            assert np.abs(logits_of(response)[0] - expected[index]).max() < 1e-5
    assert successes() - before == len(messages)


def test_a_closed_stream_ends_the_sequences_it_left_open(make_server):
    running = make_server(metrics_port=0)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stream_messages(stub, [request(tokens=[72, 105], sequence=s, start=True) for s in (1, 2, 3)])
        assert scrape_settled(running, "rnnserve_slots_in_use", 0, model="lstm") == 0
        assert scrape(running, "rnnserve_sessions_ended_total", model="lstm", kind="sequence", reason="stream_closed") == 3
        error = status_of(lambda: stub.ModelInfer(request(tokens=[72], sequence=2)))
        assert "was ended when the ModelStreamInfer stream that started it closed" in error.details()
        # a sequence started with ModelInfer is not the stream's: it outlives the stream
        stub.ModelInfer(request(tokens=[72], sequence=9, start=True))
        stream_messages(stub, [request(tokens=[105], sequence=9)])
        stub.ModelInfer(request(tokens=[33], sequence=9, end=True))


def test_a_disconnected_stream_frees_its_sequences(make_server):
    running = make_server(metrics_port=0)
    with grpc.insecure_channel(running.target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        forever = threading.Event()

        def requests():
            yield request(tokens=[72], sequence=11, start=True)
            yield request(tokens=[72], sequence=12, start=True)
            forever.wait(30)

        call = stub.ModelStreamInfer(requests())
        assert [r.error_message for r in (next(call), next(call))] == ["", ""]
        assert scrape(running, "rnnserve_sessions_active", model="lstm", kind="sequence") == 2
        call.cancel()  # the client goes away without ending its sequences
        assert scrape_settled(running, "rnnserve_sessions_active", 0, model="lstm", kind="sequence") == 0
        forever.set()
    assert scrape_settled(running, "rnnserve_slots_in_use", 0, model="lstm") == 0


def test_the_engine_learns_the_stream_each_sequence_steps_on(any_target, server):
    """A batch waits longer for sequences on many streams than for sequences multiplexed on one (batcher.company), so
    the engine must know each sequence's stream: three started on one ModelStreamInfer stream share it; one started by
    ModelInfer has none, a stream of its own."""
    ids = [7041, 7042, 7043]
    release = threading.Event()

    def requests():
        yield from (request(tokens=[72], sequence=s, start=True) for s in ids)
        release.wait(30)

    with grpc.insecure_channel(any_target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        call = stub.ModelStreamInfer(requests())
        try:
            assert [next(call).error_message for _ in ids] == ["", "", ""]
            stub.ModelInfer(request(tokens=[72], sequence=7044, start=True))
            slots = {s.ids[1]: s.slot for s in server.app.sessions.live_sessions() if s.kind == "sequence"}
            stream_of = server.app.repository.get("lstm").batcher._stream_of
            streams = [stream_of.get(slots[str(s)]) for s in ids]
            assert streams[0] is not None and streams == [streams[0]] * 3
            assert slots["7044"] not in stream_of
        finally:
            release.set()
            list(call)
        stub.ModelInfer(request(tokens=[33], sequence=7044, end=True))
