"""OpenAI-compatible completions on --http-port, driven by the official `openai` client unchanged: whole and streamed
(server-sent events ending in [DONE]), greedy and seeded, with stops and usage; each answer equals the native
Generate's for the same settings, and what the server does not do is a 400 naming the parameter."""

from __future__ import annotations

import urllib.request
from dataclasses import replace

import numpy as np
import pytest

from tests.helpers import ServerThread, distributions, scrape

openai = pytest.importorskip("openai", reason="the dev extra installs the openai client")

PROMPT = "The return "


@pytest.fixture(scope="module")
def served(base_config):
    with ServerThread(replace(base_config, http_port=0, metrics_port=0)) as running:
        yield running


@pytest.fixture
def openai_client(served):
    with openai.OpenAI(base_url=f"http://127.0.0.1:{served.app.http.port}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_models_lists_the_language_models(openai_client):
    listed = {m.id for m in openai_client.models.list()}
    assert "lstm" in listed and "gru" in listed
    assert not listed & {"tagger", "tagger_bi", "dates", "writer"}  # they do not complete a prompt


@pytest.mark.parametrize("settings", [
    dict(temperature=0.0, max_tokens=30),
    dict(temperature=0.8, top_p=0.9, seed=3, max_tokens=40),
    dict(temperature=0.0, max_tokens=60, stop=["\n"]),
])
def test_a_completion_whole_and_streamed_equals_the_native_generation(openai_client, served, settings):
    with served.client() as native:
        expected = native.generate_text("lstm", PROMPT, **(dict(temperature=1.0, top_p=1.0) | settings))
    whole = openai_client.completions.create(model="lstm", prompt=PROMPT, **settings)
    (choice,) = whole.choices
    assert choice.text == expected and whole.model == "lstm" and whole.object == "text_completion"
    assert choice.finish_reason == ("stop" if "stop" in settings and len(expected.encode()) < settings["max_tokens"] else "length")
    assert whole.usage.prompt_tokens == len(PROMPT.encode()) and whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    chunks = list(openai_client.completions.create(model="lstm", prompt=PROMPT, stream=True, stream_options={"include_usage": True}, **settings))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == expected
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == choice.finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    assert scrape(served, "nv_inference_request_success_total", api="openai", method="Generate", model="lstm") >= 2


def test_the_stream_is_server_sent_events_ending_in_done(served):
    request = urllib.request.Request(
        f"http://127.0.0.1:{served.app.http.port}/v1/completions", method="POST", headers={"Content-Type": "application/json"},
        data=b'{"model": "lstm", "prompt": "The ", "max_tokens": 5, "temperature": 0, "stream": true}',
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        events = [line for line in answer.read().decode().split("\n\n") if line]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]" and len(events) >= 2


@pytest.mark.parametrize("asked, error, param", [
    (dict(model="nope"), openai.NotFoundError, None),
    (dict(model="lstm", n=2), openai.BadRequestError, "n"),
    (dict(model="lstm", logprobs=2), openai.BadRequestError, "logprobs"),
    (dict(model="lstm", echo=True), openai.BadRequestError, "echo"),
    (dict(model="lstm", presence_penalty=0.5), openai.BadRequestError, "presence_penalty"),
    (dict(model="lstm", prompt=["a", "b"]), openai.BadRequestError, "prompt"),
    (dict(model="lstm", stop=["a", "b", "c", "d", "e"]), openai.BadRequestError, "stop"),
    (dict(model="lstm", max_tokens=0), openai.BadRequestError, None),
    (dict(model="tagger"), openai.BadRequestError, None),
])
def test_what_is_not_served_is_refused_in_words(openai_client, asked, error, param):
    asked = {"prompt": PROMPT} | asked
    with pytest.raises(error) as refused:
        openai_client.completions.create(**asked)
    body = refused.value.body
    assert body["message"] and body["type"] == "invalid_request_error" and body["param"] == param, body


def test_a_session_id_continues_a_named_session_as_the_native_generate_does(openai_client, served):
    """`session_id` (in the OpenAI client's extra_body) keeps the conversation's state between completions: each
    answer equals the native Generate's continuing a session of the same turns; `user` alone keeps nothing."""
    turns, settings = ["The return ", " and ", " so "], dict(temperature=0.8, seed=11, max_tokens=12)
    with served.client() as native:
        expected = [native.generate_text("lstm", turn, session_id="native-talk", **settings) for turn in turns]
    answered = [openai_client.completions.create(model="lstm", prompt=turn, extra_body={"session_id": "openai-talk"}, **settings).choices[0].text
                for turn in turns]
    assert answered == expected
    with served.client() as native:
        kept, native_kept, fresh = (distributions(native.stream("lstm", ["x = 1"], session_id=s, resume=bool(s), top_k=5))
                                    for s in ("openai-talk", "native-talk", ""))
    np.testing.assert_allclose(kept, native_kept, atol=1e-5)
    assert np.abs(kept - fresh).max() > 1e-4, "the session's state is the conversation's, not a fresh one"
    alone = openai_client.completions.create(model="lstm", prompt=turns[1], user="someone", **settings).choices[0].text
    assert alone == openai_client.completions.create(model="lstm", prompt=turns[1], **settings).choices[0].text
    with pytest.raises(openai.BadRequestError) as refused:
        openai_client.completions.create(model="lstm", prompt="x", extra_body={"session_id": 7})
    assert refused.value.body["param"] == "session_id"
