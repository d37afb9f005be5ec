"""The native ListModels and Generate over HTTP (--http-port), in protobuf's JSON mapping: the same answers as gRPC's,
generation as server-sent events ending in [DONE], refusals as the gRPC status's name and message with Triton's
HTTP status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import replace

import numpy as np
import pytest
from google.protobuf import json_format

from rnnserve.server.security import new_token, token_line
from rnnserve.v1 import rnnserve_pb2 as pb
from tests.helpers import ServerThread, scrape


@pytest.fixture(scope="module")
def served(base_config):
    with ServerThread(replace(base_config, http_port=0, metrics_port=0)) as running:
        yield running


def call(running, path: str, body: dict | None = None, token: str = "") -> tuple[int, str]:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{running.app.http.port}{path}", data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


def pieces_of(events: str) -> list[pb.GenerateResponse]:
    data = [event.removeprefix("data: ") for event in events.split("\n\n") if event]
    assert data[-1] == "[DONE]"
    return [json_format.Parse(d, pb.GenerateResponse()) for d in data[:-1]]


def test_models_are_listmodels_answer(served):
    status, body = call(served, "/v1/rnnserve/models")
    listed = json_format.Parse(body, pb.ListModelsResponse())
    with served.client() as native:
        expected = native.list_models()
    assert status == 200 and [(m.name, list(m.calls)) for m in listed.models] == [(m.name, list(m.calls)) for m in expected]


@pytest.mark.parametrize("asked", [
    dict(model="lstm", prompt="The return ", sampling=dict(temperature=0.0, max_tokens=30)),
    dict(model="lstm", prompt="The return ", sampling=dict(temperature=0.9, seed=4, max_tokens=30, stop=["e"])),
    dict(model="dates", source="3 May 2001", sampling=dict(temperature=0.0, max_tokens=20)),
])
def test_generate_streams_what_grpc_generates(served, asked):
    with served.client() as native:
        expected = list(native.generate(asked["model"], asked.get("prompt", ""), source=asked.get("source", ""), **asked["sampling"]))
    status, events = call(served, "/v1/rnnserve/generate", asked)
    assert status == 200
    answered = pieces_of(events)
    assert "".join(p.text for p in answered) == "".join(p.text for p in expected)
    assert [t for p in answered for t in p.token_ids] == [t for p in expected for t in p.token_ids]
    assert answered[-1].finish_reason == expected[-1].finish_reason
    rows = lambda pieces: [list(r.weights) for p in pieces for r in p.attention]  # noqa: E731
    np.testing.assert_allclose(np.array(rows(answered)), np.array(rows(expected)), atol=1e-5)
    assert scrape(served, "nv_inference_request_success_total", api="http", method="Generate") >= 1


@pytest.mark.parametrize("body, status, code, words", [
    ({"model": "nope", "prompt": "x"}, 404, "NOT_FOUND", "'nope'"),
    ({"model": "lstm", "prompt": ""}, 400, "INVALID_ARGUMENT", "prompt"),
    ({"model": "lstm", "prompt": "x", "sampling": {"temperature": "hot"}}, 400, "INVALID_ARGUMENT", "GenerateRequest"),
    ({"model": "lstm", "prmpt": "x"}, 400, "INVALID_ARGUMENT", "prmpt"),
    ({"model": "tagger", "prompt": "x"}, 400, "FAILED_PRECONDITION", "does not generate"),
])
def test_a_refused_generation_is_its_status_in_words(served, body, status, code, words):
    answered, text = call(served, "/v1/rnnserve/generate", body)
    refusal = json.loads(text)
    assert (answered, refusal["code"]) == (status, code) and words in refusal["message"], refusal


def test_under_tokens_both_need_one(base_config, tmp_path):
    token = new_token()
    (tokens := tmp_path / "tokens.txt").write_text(token_line(token, "lstm", "lstm_only") + "\n")
    with ServerThread(replace(base_config, auth_tokens=str(tokens), http_port=0)) as running:
        status, body = call(running, "/v1/rnnserve/models")
        assert status == 401 and json.loads(body)["code"] == "UNAUTHENTICATED"
        status, body = call(running, "/v1/rnnserve/models", token=token)
        assert [m.name for m in json_format.Parse(body, pb.ListModelsResponse()).models] == ["lstm"]
        status, body = call(running, "/v1/rnnserve/generate", {"model": "gru", "prompt": "x"}, token=token)
        assert status == 403 and json.loads(body)["code"] == "PERMISSION_DENIED"
