"""Every bad input gets a precise status, and the server answers correctly afterwards."""

import queue
import time

import grpc
import pytest

from rnnserve.v1 import rnnserve_pb2 as pb
from tests.helpers import active_sessions_settled, scrape, status_of

PROMPT = "The "


@pytest.fixture(scope="module")
def expected_text(server):
    with server.client() as client:
        return client.generate_text("lstm", PROMPT, temperature=0.0, max_tokens=20)


@pytest.fixture
def healthy_after(client, expected_text):
    """After the test body, the server still generates exactly what it did before."""
    yield
    assert client.generate_text("lstm", PROMPT, temperature=0.0, max_tokens=20) == expected_text
    assert active_sessions_settled(client, "lstm") == 0


def check(call, code: grpc.StatusCode, *words: str):
    error = status_of(call)
    assert error.code() == code, error.details()
    for word in words:
        assert word in error.details()


@pytest.mark.usefixtures("healthy_after")
class TestBadInput:
    def test_unknown_model(self, client):
        check(lambda: client.get_model("nope"), grpc.StatusCode.NOT_FOUND, "'nope'", "lstm")
        check(lambda: client.generate_text("nope", "x"), grpc.StatusCode.NOT_FOUND, "'nope'")
        check(lambda: list(client.stream("nope", ["x"])), grpc.StatusCode.NOT_FOUND, "'nope'")

    def test_unknown_version(self, client):
        check(lambda: client.generate_text("lstm", "x", version="7"), grpc.StatusCode.NOT_FOUND, "version '7'", "versions: 1")

    def test_text_the_char_tokenizer_cannot_encode(self, client):
        check(lambda: client.generate_text("gru", "snowman ☃"), grpc.StatusCode.INVALID_ARGUMENT, "prompt", "'☃'")
        check(lambda: list(client.stream("gru", ["☃"])), grpc.StatusCode.INVALID_ARGUMENT, "text", "'☃'")

    def test_token_ids_outside_the_vocabulary(self, client):
        check(lambda: list(client.stream("lstm", [[5, 256]])), grpc.StatusCode.INVALID_ARGUMENT, "tokens[1]", "256", "[0, 256)")
        check(lambda: list(client.stream("lstm", [[-1]])), grpc.StatusCode.INVALID_ARGUMENT, "tokens[0]")

    @pytest.mark.parametrize(
        "settings, field",
        [
            (dict(temperature=-0.5), "sampling.temperature"),
            (dict(temperature=float("nan")), "sampling.temperature"),
            (dict(temperature=1e9), "sampling.temperature"),
            (dict(top_p=0.0), "sampling.top_p"),
            (dict(top_p=1.5), "sampling.top_p"),
            (dict(top_k=100_000), "sampling.top_k"),
            (dict(max_tokens=0), "sampling.max_tokens"),
            (dict(max_tokens=10_000_000), "sampling.max_tokens"),
            (dict(stop=[""]), "sampling.stop"),
        ],
    )
    def test_absurd_sampling_settings(self, client, settings, field):
        check(lambda: client.generate_text("lstm", PROMPT, **settings), grpc.StatusCode.INVALID_ARGUMENT, field)

    def test_empty_prompt(self, client):
        check(lambda: client.generate_text("lstm", ""), grpc.StatusCode.INVALID_ARGUMENT, "prompt")

    def test_text_and_tokens_in_one_message(self, client):
        request = pb.StreamRequest(text="a", tokens=[1])
        check(lambda: list(client.stream("lstm", [request])), grpc.StatusCode.INVALID_ARGUMENT, "text or tokens")

    def test_stream_without_start(self, client):
        stub_call = client._stub.Stream(iter([pb.StreamRequest(text="a")]))
        check(lambda: list(stub_call), grpc.StatusCode.INVALID_ARGUMENT, "start")

    def test_start_on_a_later_message(self, client):
        later = pb.StreamRequest(text="b", start=pb.StreamStart(model="lstm"))
        check(lambda: list(client.stream("lstm", ["a", later])), grpc.StatusCode.INVALID_ARGUMENT, "first message")

    def test_stream_top_k_beyond_the_vocabulary(self, client):
        check(lambda: list(client.stream("lstm", ["a"], top_k=1000)), grpc.StatusCode.INVALID_ARGUMENT, "top_k")

    def test_unknown_session(self, client):
        check(lambda: list(client.stream("lstm", ["a"], session_id="ghost", resume=True)), grpc.StatusCode.NOT_FOUND, "ghost")
        check(lambda: client.close_session("ghost"), grpc.StatusCode.NOT_FOUND, "unknown or expired")

    def test_resume_or_close_without_a_session_id(self, client):
        check(lambda: list(client.stream("lstm", ["a"], resume=True)), grpc.StatusCode.INVALID_ARGUMENT, "start.session_id")
        check(lambda: client.close_session(""), grpc.StatusCode.INVALID_ARGUMENT, "session_id: name the session")

    def test_an_empty_stream_still_names_a_missing_model(self, client):
        check(lambda: list(client.stream("nope", [])), grpc.StatusCode.NOT_FOUND, "'nope'")


def test_prompt_and_chunk_over_the_limit(make_server):
    server = make_server(max_input_tokens=50)
    with server.client() as client:
        check(lambda: client.generate_text("lstm", "x" * 51), grpc.StatusCode.RESOURCE_EXHAUSTED, "51 tokens", "50")
        check(lambda: list(client.stream("lstm", ["y" * 51])), grpc.StatusCode.RESOURCE_EXHAUSTED, "50")
        assert client.generate_text("lstm", "x" * 50, temperature=0.0, max_tokens=3)


def test_more_sessions_than_the_maximum(make_server):
    server = make_server(max_sessions=2)
    with server.client() as client:
        boxes = [queue.Queue(), queue.Queue()]
        streams = [client.stream("lstm", iter(box.get, None)) for box in boxes]
        for box, stream in zip(boxes, streams):
            box.put("a")
            next(stream)
        for _ in range(25):  # a flood beyond the limit is refused at once, every time
            check(lambda: list(client.stream("lstm", ["b"])), grpc.StatusCode.RESOURCE_EXHAUSTED, "2 session slots", "--max-sessions")
            check(lambda: client.generate_text("lstm", "b"), grpc.StatusCode.RESOURCE_EXHAUSTED)
        for box, stream in zip(boxes, streams):  # the admitted streams carry on
            box.put("b")
            assert len(next(stream).steps) == 1
        for box in boxes:
            box.put(None)
        for stream in streams:
            list(stream)
        assert client.generate_text("lstm", "b", max_tokens=3)


def wait_for_no_sessions(client, model: str, timeout_s: float = 10.0) -> None:
    """A cancel reaches the server asynchronously: give it a bounded moment to free the session."""
    deadline = time.monotonic() + timeout_s
    while client.get_model(model).active_sessions:
        assert time.monotonic() < deadline, "the cancelled call's session was never freed"
        time.sleep(0.01)


def test_cancel_mid_stream_frees_the_session(make_server, expected_text):
    server = make_server(max_sessions=1)
    with server.client() as client:
        box = queue.Queue()
        stream = client.stream("lstm", iter(box.get, None))
        box.put("hello")
        next(stream)
        stream.cancel()
        wait_for_no_sessions(client, "lstm")
        generation = client.generate("lstm", "x" * 10, max_tokens=4000)
        next(generation)
        generation.cancel()  # cancelled while generating: its session must be freed too
        wait_for_no_sessions(client, "lstm")
        assert client.generate_text("lstm", PROMPT, temperature=0.0, max_tokens=20) == expected_text


def test_closing_a_session_held_by_an_open_stream_is_refused(client):
    box = queue.Queue()
    stream = client.stream("lstm", iter(box.get, None), session_id="held")
    box.put("a")
    next(stream)
    check(lambda: client.close_session("held"), grpc.StatusCode.FAILED_PRECONDITION, "open stream")
    check(lambda: list(client.stream("lstm", ["b"], session_id="held", resume=True)), grpc.StatusCode.FAILED_PRECONDITION)
    box.put(None)
    list(stream)
    client.close_session("held")


@pytest.mark.usefixtures("healthy_after")
def test_infer_bad_input(client):
    check(lambda: client.infer("nope", "x"), grpc.StatusCode.NOT_FOUND, "'nope'")
    check(lambda: client.infer("lstm", ""), grpc.StatusCode.INVALID_ARGUMENT, "empty")
    check(lambda: client.infer("lstm", [999]), grpc.StatusCode.INVALID_ARGUMENT, "tokens[0]")
    check(lambda: client.infer("gru", "☃"), grpc.StatusCode.INVALID_ARGUMENT, "'☃'")


def test_undecodable_messages_are_refused_counted_and_logged_once_without_a_traceback(make_server, caplog):
    import logging

    running = make_server(metrics_port=0)
    answers = []
    with grpc.insecure_channel(running.target) as channel, caplog.at_level(logging.INFO):
        for method in ("/rnnserve.v1.RnnServe/Infer", "/inference.GRPCInferenceService/ModelInfer"):
            for _ in range(100):
                answers.append(status_of(lambda: channel.unary_unary(method)(b"\xff\xff\xff", timeout=10)))
        for method in ("/rnnserve.v1.RnnServe/Stream", "/inference.GRPCInferenceService/ModelStreamInfer"):
            answers.append(status_of(lambda: list(channel.stream_stream(method)(iter([b"\xff\xff\xff"]), timeout=10))))
    assert {a.code() for a in answers} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert all("is not a valid " in a.details() and "(protobuf)" in a.details() for a in answers), answers[-1].details()
    assert "rnnserve.v1.InferRequest" in answers[0].details() and "inference.ModelStreamInferRequest" not in answers[0].details()
    assert scrape(running, "rnnserve_undecodable_messages_total") == 202
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].exc_info is None, [r.getMessage() for r in warnings]
    with running.client() as client:
        assert len(client.infer("lstm", "abc")) == 3  # the server goes on: a prediction per character
