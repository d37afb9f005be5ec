"""The bidirectional Stream API: per-step predictions, state across messages, reset, resume."""

import grpc
import numpy as np
import pytest

from rnnserve.client import RnnServeClient
from rnnserve.server.sampling import softmax
from rnnserve.v1 import rnnserve_pb2 as pb
from tests.helpers import active_sessions_settled, status_of


def predictions(responses):
    """[steps, k] arrays of candidate ids and probabilities over all responses."""
    steps = [s for r in responses for s in r.steps]
    ids = np.array([[c.token_id for c in s.next] for s in steps])
    probs = np.array([[c.probability for c in s.next] for s in steps])
    return ids, probs


@pytest.fixture
def client(any_target):
    """Every test here runs against --port and against --native-port (the native front end)."""
    with RnnServeClient(any_target, timeout_s=30) as connected:
        yield connected


def test_every_step_is_answered_with_the_reference_top_k(client, reference):
    text = "def f(x):\n    return x"
    responses = list(client.stream("lstm", [text[:9], text[9:]], top_k=3))
    assert [len(r.steps) for r in responses] == [9, len(text) - 9]
    assert responses[-1].position == len(text)
    ids, probs = predictions(responses)
    logits, _ = reference("lstm").run(list(text.encode()), reference("lstm").initial_state())
    expected = softmax(logits.astype(np.float64))
    assert (ids == np.argsort(-expected, axis=-1)[:, :3]).all()
    assert np.abs(probs - np.take_along_axis(expected, ids, axis=-1)).max() < 1e-5
    assert [s.token_text for r in responses for s in r.steps] == list(text)


def test_chunks_of_any_size_give_the_same_predictions(client):
    text = "while True: pass"
    _, whole = predictions(client.stream("gru", [text]))
    _, single = predictions(client.stream("gru", list(text)))
    assert np.abs(whole - single).max() < 1e-5


def test_reset_returns_to_the_initial_state(client):
    fresh = predictions(client.stream("lstm", ["abc"]))[1]
    responses = list(client.stream("lstm", ["some context ", pb.StreamRequest(reset=True, text="abc")]))
    assert responses[1].position == 3
    assert np.abs(predictions(responses[1:])[1] - fresh).max() < 1e-6


def test_token_ids_are_accepted(client):
    by_text = predictions(client.stream("lstm", ["hi"]))[1]
    by_ids = predictions(client.stream("lstm", [[ord("h"), ord("i")]]))[1]
    assert np.abs(by_text - by_ids).max() < 1e-6


def test_resumed_session_continues_exactly_as_uninterrupted(client):
    uninterrupted = predictions(client.stream("lstm", ["The first half, ", "and the second."]))[1]
    first = list(client.stream("lstm", ["The first half, "], session_id="resume-me"))
    second = list(client.stream("lstm", ["and the second."], session_id="resume-me", resume=True))
    assert second[0].position == len("The first half, and the second.")
    assert np.abs(predictions(first + second)[1] - uninterrupted).max() < 1e-6
    client.close_session("resume-me")
    assert status_of(lambda: list(client.stream("lstm", ["x"], session_id="resume-me", resume=True))).code() == grpc.StatusCode.NOT_FOUND


def test_named_session_expires_after_its_ttl(make_server):
    server = make_server(session_ttl_s=0.3)
    with server.client() as client:
        list(client.stream("lstm", ["abc"], session_id="short-lived"))
        assert active_sessions_settled(client, "lstm") == 0  # its timer fired
        error = status_of(lambda: list(client.stream("lstm", ["d"], session_id="short-lived", resume=True)))
        assert error.code() == grpc.StatusCode.NOT_FOUND and "expired" in error.details()
        assert active_sessions_settled(client, "lstm") == 0


def test_a_named_session_cannot_be_created_twice(client):
    list(client.stream("lstm", ["a"], session_id="twice"))
    error = status_of(lambda: list(client.stream("lstm", ["b"], session_id="twice")))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    client.close_session("twice")


def test_interleaved_streams_keep_their_own_state(client):
    """Two streams stepping in turn get what each would get alone."""
    alone_a = predictions(client.stream("rnn", list("aaaa")))[1]
    alone_b = predictions(client.stream("rnn", list("zyxw")))[1]
    import queue

    outbox_a, outbox_b = queue.Queue(), queue.Queue()

    def chunks(box):
        while (item := box.get()) is not None:
            yield item

    stream_a = client.stream("rnn", chunks(outbox_a))
    stream_b = client.stream("rnn", chunks(outbox_b))
    got_a, got_b = [], []
    for a, b in zip("aaaa", "zyxw"):
        outbox_a.put(a)
        got_a.append(next(stream_a))
        outbox_b.put(b)
        got_b.append(next(stream_b))
    outbox_a.put(None)
    outbox_b.put(None)
    assert np.abs(predictions(got_a)[1] - alone_a).max() < 1e-6
    assert np.abs(predictions(got_b)[1] - alone_b).max() < 1e-6


def test_infer_takes_the_whole_input_from_the_initial_state(client):
    text = "The whole input at once."
    streamed = [c.probability for r in client.stream("lstm", [text[:7], text[7:]], top_k=4) for s in r.steps for c in s.next]
    inferred = client.infer("lstm", text, top_k=4)
    assert [s.token_text for s in inferred] == list(text)
    assert [c.probability for s in inferred for c in s.next] == pytest.approx(streamed, abs=1e-6)
    assert client.infer("lstm", [ord(ch) for ch in "ab"])[1].token_text == "b"


def test_every_model_says_which_calls_it_supports(client):
    info = client.get_model("lstm")
    assert list(info.calls) == ["Infer", "Stream", "Generate"] and not info.labels
