"""Generate continuing a named session: its state holds every prompt and every token each answer named, exactly
as if that text had been streamed; a generation that fails leaves the session as it was; and what a session cannot
continue is refused in words."""

from __future__ import annotations

import json
import time
import uuid

import grpc
import numpy as np
import pytest

from rnnserve.text import tokenizer_from_spec
from tests.helpers import distributions, status_of

GREEDY = dict(temperature=0.0, max_tokens=25)


MADE: list[str] = []


def _id() -> str:
    MADE.append(f"talk-{uuid.uuid4().hex[:8]}")
    return MADE[-1]


@pytest.fixture(autouse=True)
def closed_after(client):
    """The shared server's other tests expect no session left open: every named session made here is closed."""
    yield
    while MADE:
        session = MADE.pop()
        deadline = time.monotonic() + 10  # one whose stream was cancelled is attached until the server sees it end
        while True:
            try:
                client.close_session(session)
                break
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    break
                if time.monotonic() > deadline:
                    raise


def _answer(client, session: str, prompt: str, **settings) -> tuple[str, list[int]]:
    """(the text answered, every token the answer named: what the session now holds beyond the prompt)."""
    pieces = list(client.generate("lstm", prompt, session_id=session, **settings))
    return "".join(p.text for p in pieces), [t for p in pieces for t in p.token_ids]


def _next_steps(client, chunks: list, session: str = "", resume: bool = False) -> np.ndarray:
    return distributions(client.stream("lstm", chunks, session_id=session, resume=resume, top_k=5))


SAMPLED = dict(temperature=0.9, seed=5, max_tokens=20)


@pytest.mark.parametrize("settings", [GREEDY, SAMPLED, dict(SAMPLED, stop=["s"])])
def test_a_continued_generation_equals_one_from_the_whole_text(client, settings):
    session = _id()
    first, named = _answer(client, session, "The return ", **settings)
    if "stop" in settings:  # the engine ran past the stop: the session went back, and took the answer again
        assert _text(client, named) == first + "s" and len(named) < settings["max_tokens"], "the stop's tokens are named, not written"
    second, named_second = _answer(client, session, " and ", **settings)
    if settings is GREEDY:  # its text is whole characters: the same text as a prompt is the same tokens
        assert second == client.generate_text("lstm", "The return " + _text(client, named) + " and ", **settings) and second
    resumed = _next_steps(client, ["x = 1"], session, resume=True)
    fresh = _next_steps(client, ["The return ", named, " and ", named_second, "x = 1"])
    np.testing.assert_allclose(resumed, fresh[-len("x = 1"):], atol=1e-5)


def _text(client, tokens: list[int]) -> str:
    tokenizer = tokenizer_from_spec(json.loads(client.get_model("lstm").metadata_json)["tokenizer"])
    return b"".join(tokenizer.token_bytes(t) for t in tokens).decode("utf-8", errors="replace")


def test_a_stream_resumed_after_a_generation_continues_its_exact_state(client):
    session = _id()
    _, named = _answer(client, session, "The ", **GREEDY)
    resumed = _next_steps(client, ["return x"], session, resume=True)
    fresh = _next_steps(client, ["The ", named, "return x"])[-len("return x"):]
    np.testing.assert_allclose(resumed, fresh, atol=1e-5)


def test_a_generation_continues_a_session_a_stream_started(client):
    session = _id()
    list(client.stream("lstm", ["def f(x):\n    "], session_id=session))  # a stream's session outlives it, for the TTL
    assert client.generate_text("lstm", "return ", session_id=session, **GREEDY) == client.generate_text(
        "lstm", "def f(x):\n    return ", **GREEDY
    )


def test_a_cancelled_generation_leaves_the_session_as_it_was(client):
    session = _id()
    _, named = _answer(client, session, "The ", **GREEDY)
    pieces = client.generate("lstm", "x" * 10, session_id=session, max_tokens=4000)
    next(pieces)
    pieces.cancel()
    with pytest.raises(grpc.RpcError):
        list(pieces)
    deadline = time.monotonic() + 10  # the server sees the cancel a moment after the client: until then it is attached
    while True:
        try:
            resumed = _next_steps(client, ["return"], session, resume=True)
            break
        except grpc.RpcError as err:
            if err.code() != grpc.StatusCode.FAILED_PRECONDITION or time.monotonic() > deadline:
                raise
    np.testing.assert_allclose(resumed, _next_steps(client, ["The ", named, "return"])[-len("return"):], atol=1e-5)


def test_what_a_session_cannot_continue_is_refused_in_words(client):
    assert "source" in status_of(lambda: client.generate_text("dates", source="3 May 2001", session_id=_id())).details()
    session = _id()
    # starts the session (its text may be empty: a barely trained model samples its end first about once in 300)
    client.generate_text("writer", label=client.get_model("writer").conditions[0], session_id=session, max_tokens=5)
    refused = status_of(lambda: client.generate_text("writer", label=client.get_model("writer").conditions[0], session_id=session))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT and "label" in refused.details()
    stream = client.stream("lstm", iter(lambda: "ab", None), session_id=(held := _id()))
    next(stream)  # attached to this open stream
    refused = status_of(lambda: client.generate_text("lstm", "x", session_id=held))
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION and "attached" in refused.details()
    stream.cancel()
    other = _id()
    client.generate_text("lstm", "a", session_id=other, max_tokens=2)
    assert status_of(lambda: list(client.stream("gru", ["x"], session_id=other, resume=True))).code() == grpc.StatusCode.FAILED_PRECONDITION
